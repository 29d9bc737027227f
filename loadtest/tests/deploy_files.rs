//! The deployment files are checked by the tools that will read them: Prometheus's own
//! `promtool` (Debian's `prometheus` package) for the scrape configuration, the alert
//! rules and their unit tests; and every series a rule queries must be one our nodes
//! export. Each check is also run on a deliberately broken copy, which must fail.

use std::path::{Path, PathBuf};
use std::process::Command;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (scripts/setup-test-deps.sh installs Debian's prometheus package)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A copy of deploy/prometheus to break.
fn copy() -> tempdir::Dir {
    let dir = tempdir::Dir::new();
    for entry in std::fs::read_dir(prometheus_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path.join(path.file_name().unwrap())).unwrap();
        } else {
            let sub = dir.path.join(path.file_name().unwrap());
            std::fs::create_dir_all(&sub).unwrap();
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, sub.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    dir
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?} to break");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// `sfu_` series named in a rules file that our nodes do not export.
fn unknown_series(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in rules.match_indices("sfu_") {
        let name: String =
            rules[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        let exported = node_kit::metrics_catalogue::find(&name).is_some();
        // Alert names and label values are not series.
        if !exported && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }

    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "sfu-deploy-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[test]
fn the_scrape_configuration_is_valid_and_a_broken_one_is_caught() {
    let (ok, said) = promtool(&prometheus_dir(), &["check", "config", "prometheus.yml"]);
    assert!(ok, "{said}");
    let broken = copy();
    edit(&broken.path, "prometheus.yml", "scrape_interval: 15s", "scrape_interval: fifteen");
    let (ok, said) = promtool(&broken.path, &["check", "config", "prometheus.yml"]);
    assert!(!ok, "a broken scrape configuration passed: {said}");
}

#[test]
fn the_alert_rules_are_valid_tested_and_query_only_series_we_export() {
    let dir = prometheus_dir();
    let (ok, said) = promtool(&dir, &["check", "rules", "alerts.yml"]);
    assert!(ok, "{said}");
    let (ok, said) = promtool(&dir, &["test", "rules", "alerts_test.yml"]);
    assert!(ok, "{said}");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    assert_eq!(unknown_series(&rules), Vec::<String>::new(), "alert rules query series no node exports");

    // Broken copies: bad PromQL, a changed threshold the unit tests notice, a series
    // nobody exports.
    let broken = copy();
    edit(&broken.path, "alerts.yml", "sfu_relay_link_up == 0", "sfu_relay_link_up ==");
    assert!(!promtool(&broken.path, &["check", "rules", "alerts.yml"]).0, "bad PromQL passed");
    let broken = copy();
    edit(&broken.path, "alerts.yml", "> 0.9", "> 0.95");
    assert!(!promtool(&broken.path, &["test", "rules", "alerts_test.yml"]).0, "a changed threshold passed its tests");
    assert_eq!(unknown_series("expr: rate(sfu_edge_rtp_in_totl[5m]) > 0"), vec!["sfu_edge_rtp_in_totl"]);
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A tool from the test venv (`scripts/setup-test-deps.sh` installs them).
fn venv_tool(name: &str) -> PathBuf {
    let bin = std::env::var_os("SFU_TEST_PYTHON")
        .map(|p| PathBuf::from(p).parent().unwrap().to_path_buf())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin"));
    let tool = bin.join(name);
    assert!(
        tool.exists(),
        "{} not found: run scripts/setup-test-deps.sh (the README's test command does)",
        tool.display()
    );
    tool
}

fn run(tool: &Path, args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new(tool).args(args).arg(file).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn broken_copy(file: &Path, from: &str, to: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} has no {from:?} to break", file.display());
    let path = dir.path.join(file.file_name().unwrap());
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    (dir, path)
}

#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validate = venv_tool("kubernetes-validate");
    let dir = deploy_dir().join("kubernetes");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name == "kustomization.yaml" {
            continue;
        }
        let (ok, said) = run(&validate, &["--strict", "--quiet"], &path);
        assert!(ok, "{name}: {said}");
        assert!(kustomization.contains(&format!("- {name}")), "kustomization.yaml does not list {name}");
        manifests.push(name);
    }
    assert!(manifests.len() >= 5, "{manifests:?}");

    // What the edge fleet needs to drain without dropping listeners.
    let edge = std::fs::read_to_string(dir.join("edge.yaml")).unwrap();
    for needed in [
        "path: /readyz",
        "path: /healthz",
        "preStop:",
        "command: [\"edge-sfu\", \"drain\"]",
        "terminationGracePeriodSeconds: 630",
        "value: \"10m\"",
        "kind: PodDisruptionBudget",
        "status.hostIP",
        "limits:",
        "prometheus.io/scrape",
    ] {
        assert!(edge.contains(needed), "edge.yaml lacks {needed}");
    }

    let (_dir, broken) = broken_copy(&dir.join("edge.yaml"), "hostNetwork: true", "hostNetwork: \"yes\"");
    assert!(!run(&validate, &["--strict", "--quiet"], &broken).0, "a broken manifest validated");
}

#[test]
fn the_compose_file_validates_against_the_compose_specification() {
    let check = venv_tool("check-jsonschema");
    let compose = deploy_dir().join("compose.yaml");
    let (ok, said) = run(&check, &["--builtin-schema", "vendor.compose-spec"], &compose);
    assert!(ok, "{said}");
    let (_dir, broken) = broken_copy(&compose, "restart: unless-stopped", "restart: [unless-stopped]");
    assert!(!run(&check, &["--builtin-schema", "vendor.compose-spec"], &broken).0, "a broken compose file validated");
    // Its Prometheus runs the same rules with a valid configuration.
    let (ok, said) = promtool(&prometheus_dir(), &["check", "config", "compose.yml"]);
    assert!(ok, "{said}");
}

#[test]
fn the_image_builds_both_nodes_in_a_builder_stage_and_runs_them_unprivileged() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let stages = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(stages, 2, "a build stage and a small runtime stage");
    assert!(dockerfile.contains("-p edge-sfu -p core-sfu") && dockerfile.contains("USER 10001"));
    let ignore = std::fs::read_to_string(deploy_dir().join("../.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"), "the build context must not carry target/");
}

#[test]
fn the_dashboard_queries_only_series_we_export_in_valid_promql() {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/sfu.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        assert_eq!(unknown_series(e), Vec::<String>::new(), "{e}");
    }
    // promtool parses PromQL only inside rules: each query becomes a recording rule.
    let check = |exprs: &[String]| {
        let dir = tempdir::Dir::new();
        let rules: String = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                format!("      - record: dashboard:q{i}\n        expr: {}\n", serde_json::to_string(e).unwrap())
            })
            .collect();
        std::fs::write(dir.path.join("q.yml"), format!("groups:\n  - name: dashboard\n    rules:\n{rules}")).unwrap();
        promtool(&dir.path, &["check", "rules", "q.yml"])
    };
    let (ok, said) = check(&exprs);
    assert!(ok, "{said}");
    let mut broken = exprs.clone();
    broken[0] = "sum by (node (sfu_edge_sessions)".into();
    assert!(!check(&broken).0, "broken PromQL passed");
}
