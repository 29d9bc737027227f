//! Active-speaker selection: a smoothed activity score per candidate from RFC 6464
//! levels, top N slots with hysteresis and a minimum hold. A pure function of the
//! levels fed in and the `Instant`s given; no clock is read.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::rtp_header::AudioLevel;

#[derive(Clone, Debug)]
pub struct SelectorConfig {
    pub slots: usize,
    /// Time constant of the activity average.
    pub smoothing: Duration,
    /// Score at and above which a candidate counts as speaking.
    pub speaking_threshold: f32,
    /// A holder is not replaced before holding this long.
    pub min_hold: Duration,
    /// A holder silent this long gives up its slot.
    pub release_after: Duration,
    /// A challenger must beat the weakest holder by this much.
    pub switch_margin: f32,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            slots: 3,
            smoothing: Duration::from_millis(150),
            speaking_threshold: 0.2,
            min_hold: Duration::from_millis(1000),
            release_after: Duration::from_millis(1500),
            switch_margin: 0.15,
        }
    }
}

/// Activity 0..=1 of one packet: -dBov 0 is loudest, quieter than -80 dBov is silence.
pub fn activity(level: AudioLevel) -> f32 {
    let a = (1.0 - f32::from(level.level) / 80.0).clamp(0.0, 1.0);
    if level.voice {
        a
    } else {
        a * 0.5
    }
}

#[derive(Clone, Debug)]
struct Candidate {
    score: f32,
    updated: Instant,
    last_speaking: Option<Instant>,
}

impl Candidate {
    fn decayed(&self, now: Instant, tau: Duration) -> f32 {
        let dt = now.saturating_duration_since(self.updated).as_secs_f32();
        self.score * (-dt / tau.as_secs_f32()).exp()
    }
}

#[derive(Clone, Copy, Debug)]
struct Holder<K> {
    key: K,
    since: Instant,
}

#[derive(Clone, Debug)]
pub struct ActiveSpeakers<K> {
    config: SelectorConfig,
    candidates: HashMap<K, Candidate>,
    slots: Vec<Option<Holder<K>>>,
}

impl<K: Copy + Eq + Hash + Ord> ActiveSpeakers<K> {
    pub fn new(config: SelectorConfig) -> Self {
        let slots = vec![None; config.slots];
        ActiveSpeakers { config, candidates: HashMap::new(), slots }
    }

    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    /// Feeds one packet's level.
    pub fn on_level(&mut self, key: K, level: AudioLevel, now: Instant) {
        let tau = self.config.smoothing;
        let threshold = self.config.speaking_threshold;
        // A newcomer's history is silence long past: its first packet counts in full, as a
        // returning speaker's does, so a free slot is taken on the first word.
        let long_ago = now.checked_sub(tau * 10).unwrap_or(now);
        let c = self.candidates.entry(key).or_insert(Candidate { score: 0.0, updated: long_ago, last_speaking: None });
        let dt = now.saturating_duration_since(c.updated).as_secs_f32().max(0.001);
        let alpha = 1.0 - (-dt / tau.as_secs_f32()).exp();
        c.score += (activity(level) - c.score) * alpha;
        c.updated = now;
        if c.score >= threshold {
            c.last_speaking = Some(now);
        }
    }

    /// Forgets a candidate (left, or stopped sending) and frees its slot.
    pub fn remove(&mut self, key: &K) {
        self.candidates.remove(key);
        for slot in &mut self.slots {
            if slot.is_some_and(|h| h.key == *key) {
                *slot = None;
            }
        }
    }

    /// Re-evaluates the slots; returns whether any changed.
    pub fn update(&mut self, now: Instant) -> bool {
        let cfg = &self.config;
        let score = |c: &Candidate| c.decayed(now, cfg.smoothing);
        let mut changed = false;

        // Release holders silent for too long.
        for slot in &mut self.slots {
            if let Some(h) = *slot {
                let silent = match self.candidates.get(&h.key).and_then(|c| c.last_speaking) {
                    Some(t) => now.saturating_duration_since(t) >= cfg.release_after,
                    None => true,
                };
                if silent {
                    *slot = None;
                    changed = true;
                }
            }
        }

        // Challengers: speaking candidates without a slot, loudest first (ties by key).
        let mut challengers: Vec<(f32, K)> = self
            .candidates
            .iter()
            .filter(|(k, _)| !self.slots.iter().flatten().any(|h| h.key == **k))
            .map(|(k, c)| (score(c), *k))
            .filter(|(s, _)| *s >= cfg.speaking_threshold)
            .collect();
        challengers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

        for (challenger_score, key) in challengers {
            if let Some(free) = self.slots.iter_mut().find(|s| s.is_none()) {
                *free = Some(Holder { key, since: now });
                changed = true;
                continue;
            }
            // Replace the weakest holder that has held long enough, if clearly louder.
            let weakest = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|h| (i, h)))
                .filter(|(_, h)| now.saturating_duration_since(h.since) >= cfg.min_hold)
                .map(|(i, h)| (i, self.candidates.get(&h.key).map_or(0.0, score)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match weakest {
                Some((i, weakest_score)) if challenger_score > weakest_score + cfg.switch_margin => {
                    self.slots[i] = Some(Holder { key, since: now });
                    changed = true;
                }
                _ => break,
            }
        }
        changed
    }

    /// The holder of each slot.
    pub fn slots(&self) -> impl Iterator<Item = Option<K>> + '_ {
        self.slots.iter().map(|s| s.map(|h| h.key))
    }

    pub fn slot_of(&self, key: &K) -> Option<usize> {
        self.slots.iter().position(|s| s.is_some_and(|h| h.key == *key))
    }

    /// Current smoothed score of a candidate.
    pub fn score(&self, key: &K, now: Instant) -> Option<f32> {
        self.candidates.get(key).map(|c| c.decayed(now, self.config.smoothing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOUD: AudioLevel = AudioLevel { level: 20, voice: true };
    const SOFT: AudioLevel = AudioLevel { level: 55, voice: true };
    const QUIET: AudioLevel = AudioLevel::SILENCE;

    /// Feeds 20 ms packets for `ms` milliseconds with the given level per key.
    fn run(sel: &mut ActiveSpeakers<u32>, t: &mut Instant, ms: u64, levels: &[(u32, AudioLevel)]) {
        for _ in 0..ms / 20 {
            *t += Duration::from_millis(20);
            for &(k, l) in levels {
                sel.on_level(k, l, *t);
            }
            sel.update(*t);
        }
    }

    fn holders(sel: &ActiveSpeakers<u32>) -> Vec<u32> {
        let mut v: Vec<u32> = sel.slots().flatten().collect();
        v.sort();
        v
    }

    #[test]
    fn steady_speaker_keeps_slot_and_silence_frees_it() {
        let mut t = Instant::now();
        let mut sel = ActiveSpeakers::new(SelectorConfig::default());
        run(&mut sel, &mut t, 1000, &[(1, LOUD), (2, QUIET)]);
        assert_eq!(holders(&sel), vec![1]);
        let slot = sel.slot_of(&1);
        run(&mut sel, &mut t, 5000, &[(1, LOUD), (2, QUIET)]);
        assert_eq!(sel.slot_of(&1), slot);
        run(&mut sel, &mut t, 3000, &[(1, QUIET), (2, QUIET)]);
        assert_eq!(holders(&sel), Vec::<u32>::new());
    }

    #[test]
    fn loud_newcomer_takes_weakest_slot_within_300ms() {
        let mut t = Instant::now();
        let mut sel = ActiveSpeakers::new(SelectorConfig::default());
        run(&mut sel, &mut t, 2000, &[(1, LOUD), (2, LOUD), (3, SOFT), (4, QUIET)]);
        assert_eq!(holders(&sel), vec![1, 2, 3]);
        run(&mut sel, &mut t, 300, &[(1, LOUD), (2, LOUD), (3, SOFT), (4, LOUD)]);
        assert_eq!(holders(&sel), vec![1, 2, 4]);
    }

    #[test]
    fn a_newcomer_takes_a_free_slot_on_its_first_word() {
        let t = Instant::now();
        let mut sel = ActiveSpeakers::new(SelectorConfig { slots: 2, ..Default::default() });
        sel.on_level(7, LOUD, t);
        assert!(sel.update(t));
        assert_eq!(holders(&sel), vec![7]);
    }

    #[test]
    fn short_cough_does_not_steal_a_slot() {
        let mut t = Instant::now();
        let mut sel = ActiveSpeakers::new(SelectorConfig { slots: 1, ..Default::default() });
        run(&mut sel, &mut t, 2000, &[(1, SOFT), (2, QUIET)]);
        run(&mut sel, &mut t, 40, &[(1, SOFT), (2, LOUD)]);
        run(&mut sel, &mut t, 1000, &[(1, SOFT), (2, QUIET)]);
        assert_eq!(holders(&sel), vec![1]);
    }

    #[test]
    fn alternating_bursts_do_not_flap() {
        let mut t = Instant::now();
        let mut sel = ActiveSpeakers::new(SelectorConfig { slots: 1, ..Default::default() });
        let mut changes = 0;
        let mut last = None;
        for i in 0..20 {
            let (a, b) = if i % 2 == 0 { (LOUD, SOFT) } else { (SOFT, LOUD) };
            run(&mut sel, &mut t, 200, &[(1, a), (2, b)]);
            let now: Vec<u32> = sel.slots().flatten().collect();
            if last.as_ref() != Some(&now) {
                changes += 1;
                last = Some(now);
            }
        }
        // 4 s of 200 ms alternation: the minimum hold caps switches at about one a second.
        assert!(changes <= 5, "{changes} selection changes");
    }
}
