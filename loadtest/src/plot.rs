//! `--plot FILE.svg`: latency percentiles over time and loss per edge.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(430);

    let t_max = report.timeline.last().map_or(1.0, |t| t.t_s).max(1.0);
    let y_max = report.timeline.iter().map(|t| t.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption("End-to-end latency per second (ms)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("seconds").y_desc("ms").draw().map_err(err)?;
    for (name, color, pick) in [("p50", BLUE, 0usize), ("p99", RED, 1)] {
        let points = report
            .timeline
            .iter()
            .filter(|t| t.packets_per_s > 0)
            .map(|t| (t.t_s, if pick == 0 { t.p50_ms } else { t.p99_ms }));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;

    let edges = report.per_edge.len().max(1) as u32;
    let loss_max = report.per_edge.iter().map(|e| e.loss_percent).fold(0.01, f64::max) * 1.2;
    let mut bars = ChartBuilder::on(&bottom)
        .caption("Loss per edge (%)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((1u32..edges + 1).into_segmented(), 0.0..loss_max)
        .map_err(err)?;
    bars.configure_mesh().x_desc("edge").y_desc("% lost").draw().map_err(err)?;
    bars.draw_series(
        Histogram::vertical(&bars)
            .style(BLUE.mix(0.6).filled())
            .margin(20)
            .data(report.per_edge.iter().map(|e| (e.edge as u32, e.loss_percent))),
    )
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}
