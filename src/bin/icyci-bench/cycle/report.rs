//! The table: one line per figure, with its unit, the target of issue 5
//! beside it and a plain "meets" or "misses" (never an exit status: the
//! machine is noisy).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::daemon::by_subcommand;
use super::floor::{Floor, Samples};
use super::{
    Contention, CountedCycle, Idle, Latency, Options, Rss, Scale, BIG_OUTPUT, CONTENTION_INSTANCES,
    CONTENTION_POLL, COUNT_POLL, IDLE_POLL, LATENCY_POLL, RSS_POLL,
};
use crate::common::{ms, ratio, Stats};

#[derive(Default)]
pub struct Results {
    pub floor: Option<Floor>,
    pub latency: Option<Latency>,
    pub count: Option<Vec<CountedCycle>>,
    pub rss: Option<Rss>,
    pub idle: Option<Idle>,
    pub contention: Option<Contention>,
    pub scale: Option<Scale>,
    /// CPU the git wrapper's shell adds to each call, taken out of the CPU
    /// figures of wrapped daemons.
    pub wrapper_overhead: Duration,
}

pub struct Setup<'a> {
    pub icyci: &'a Path,
    pub git_version: String,
    pub options: &'a Options,
    pub cpus: usize,
}

struct Row {
    label: String,
    value: String,
    target: String,
    verdict: Option<bool>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.rows.push(Row {
            label: title.to_owned(),
            value: String::new(),
            target: String::new(),
            verdict: None,
        });
    }

    fn figure(&mut self, label: &str, value: String) {
        self.judged(label, value, "", None);
    }

    fn judged(&mut self, label: &str, value: String, target: &str, verdict: Option<bool>) {
        self.rows.push(Row {
            label: format!("  {label}"),
            value,
            target: target.to_owned(),
            verdict,
        });
    }

    fn print(&self) {
        let width = |pick: fn(&Row) -> &str| {
            self.rows
                .iter()
                .filter(|row| !row.value.is_empty())
                .map(|row| pick(row).chars().count())
                .max()
                .unwrap_or(0)
        };
        let label_width = width(|row| &row.label);
        // Long values without a target (breakdowns) do not widen the table.
        let value_width = self
            .rows
            .iter()
            .filter(|row| !row.target.is_empty())
            .map(|row| row.value.chars().count())
            .max()
            .unwrap_or(0)
            .max("measured".len());
        let target_width = width(|row| &row.target);
        println!(
            "  {:<label_width$}  {:<value_width$}  {:<target_width$}",
            "", "measured", "target"
        );
        for row in &self.rows {
            if row.value.is_empty() {
                println!("  {}", row.label);
                continue;
            }
            let verdict = match row.verdict {
                Some(true) => "meets",
                Some(false) => "misses",
                None if row.target.is_empty() => "",
                None => "n/a",
            };
            let line = format!(
                "  {:<label_width$}  {:<value_width$}  {:<target_width$}  {verdict}",
                row.label, row.value, row.target
            );
            println!("{}", line.trim_end());
        }
    }
}

fn ms_pair(stats: Stats) -> String {
    format!("{:.1} / {:.1} ms", ms(stats.median), ms(stats.p90))
}

/// `fetch 2, rev-parse 3` (means per cycle, with one decimal when not whole).
fn breakdown(counts: &BTreeMap<String, f64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    let mut sorted: Vec<_> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    sorted
        .into_iter()
        .map(|(name, count)| format!("{name} {}", number(*count)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn number(value: f64) -> String {
    if (value - value.round()).abs() < 0.05 {
        format!("{}", value.round())
    } else {
        format!("{value:.1}")
    }
}

/// Mean invocations per subcommand over `cycles` sets of calls.
fn mean_breakdown<'a>(sets: impl Iterator<Item = &'a Vec<Vec<String>>>) -> BTreeMap<String, f64> {
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = 0;
    for calls in sets {
        count += 1;
        for (name, n) in by_subcommand(calls) {
            *total.entry(name).or_insert(0) += n;
        }
    }
    total
        .into_iter()
        .map(|(name, n)| (name, n as f64 / count.max(1) as f64))
        .collect()
}

fn median_count(mut values: Vec<usize>) -> f64 {
    values.sort_unstable();
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2] as f64,
        n => (values[n / 2 - 1] + values[n / 2]) as f64 / 2.0,
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub fn print(setup: &Setup, results: &Results) {
    let options = setup.options;
    let profile = setup
        .icyci
        .parent()
        .and_then(Path::file_name)
        .map_or(String::new(), |name| name.to_string_lossy().into_owned());
    println!();
    println!(
        "icyci-bench cycle: {} ({profile} build), {}, {} CPUs{}",
        setup.icyci.display(),
        setup.git_version,
        setup.cpus,
        if options.quick {
            "; quick mode: few samples and small repositories, figures are indicative only"
        } else {
            ""
        }
    );
    println!(
        "  script: true; latency daemon at -poll-interval {LATENCY_POLL}, counted daemon at \
         {COUNT_POLL} (git wrapper first on its PATH), idle at {IDLE_POLL}, contention: \
         {CONTENTION_INSTANCES} instances at {CONTENTION_POLL}, memory at {RSS_POLL}"
    );
    println!();
    let mut table = Table::default();
    let small = results.latency.as_ref().and_then(|l| Stats::of(&l.samples));
    cycle_rows(&mut table, options, results, small);
    count_rows(&mut table, results);
    idle_rows(&mut table, results);
    contention_rows(&mut table, results);
    scale_rows(&mut table, results, small);
    if let Some(rss) = &results.rss {
        table.section("memory: daemon's peak RSS (VmHWM; MB = 1024 kB)");
        table.judged(
            &format!("idle, after {:.0?} of polls", options.rss_idle),
            format!("{:.1} MB", mb(rss.idle_kb)),
            "<= 4 MB",
            Some(mb(rss.idle_kb) <= 4.0),
        );
        table.judged(
            &format!("after a cycle whose script prints {} MB", BIG_OUTPUT >> 20),
            format!("{:.1} MB", mb(rss.big_kb)),
            "<= 8 MB",
            Some(mb(rss.big_kb) <= 8.0),
        );
    }
    table.print();
}

fn cycle_rows(table: &mut Table, options: &Options, results: &Results, small: Option<Stats>) {
    if results.latency.is_none() && results.floor.is_none() {
        return;
    }
    table.section(&format!(
        "cycle: push -> result note visible, {} cycles (median / p90)",
        options.cycles
    ));
    if let Some(small) = small {
        table.figure("icyci", ms_pair(small));
    }
    let floor_stats = |samples: &Samples| Stats::of(&samples.latency);
    if let Some(floor) = &results.floor {
        for (name, samples) in [("batched", &floor.batched), ("unbatched", &floor.unbatched)] {
            if let Some(stats) = floor_stats(samples) {
                table.figure(
                    &format!("plain-git floor, {name} ({} processes)", samples.processes),
                    ms_pair(stats),
                );
            }
        }
    }
    let batched = results
        .floor
        .as_ref()
        .and_then(|floor| floor_stats(&floor.batched));
    let unbatched = results
        .floor
        .as_ref()
        .and_then(|floor| floor_stats(&floor.unbatched));
    if let (Some(icyci), Some(batched)) = (small, batched) {
        let r = ratio(icyci.median, batched.median);
        table.judged(
            "ratio icyci / batched floor (medians)",
            format!("{r:.2}x"),
            "<= 1.15x",
            Some(r <= 1.15),
        );
    }
    if let (Some(icyci), Some(unbatched)) = (small, unbatched) {
        table.figure(
            "ratio icyci / unbatched floor",
            format!("{:.2}x", ratio(icyci.median, unbatched.median)),
        );
    }
    if let Some(latency) = &results.latency {
        table.figure(
            &format!("CPU per cycle, icyci at {LATENCY_POLL} (its polls between cycles included)"),
            format!("{:.1} ms", ms(latency.cpu)),
        );
    }
    if let Some(floor) = &results.floor {
        let per = |samples: &Samples| samples.cpu / samples.latency.len().max(1) as u32;
        table.figure(
            "CPU per cycle, floor batched / unbatched",
            format!(
                "{:.1} / {:.1} ms",
                ms(per(&floor.batched)),
                ms(per(&floor.unbatched))
            ),
        );
    }
}

fn count_rows(table: &mut Table, results: &Results) {
    let Some(counted) = &results.count else {
        return;
    };
    // Cycles where a poll overlapped the push may count an idle poll too.
    let clean: Vec<&CountedCycle> = counted.iter().filter(|c| !c.disturbed).collect();
    let used: Vec<&CountedCycle> = if clean.is_empty() {
        counted.iter().collect()
    } else {
        clean
    };
    table.section(&format!(
        "git processes per cycle ({} cycles counted{})",
        used.len(),
        if used.len() < counted.len() {
            format!(
                ", {} left out: a poll overlapped the push",
                counted.len() - used.len()
            )
        } else {
            String::new()
        }
    ));
    let per_cycle = median_count(used.iter().map(|c| c.cycle.len()).collect());
    table.judged(
        "per cycle, including the poll that noticed it (median)",
        number(per_cycle),
        "<= 8",
        Some(per_cycle <= 8.0),
    );
    table.figure(
        "  by subcommand",
        breakdown(&mean_breakdown(used.iter().map(|c| &c.cycle))),
    );
    let mut cpu: Vec<Duration> = used
        .iter()
        .map(|c| {
            c.cpu
                .saturating_sub(results.wrapper_overhead * c.cycle.len() as u32)
        })
        .collect();
    cpu.sort();
    if let Some(stats) = Stats::of(&cpu) {
        table.figure(
            "CPU per cycle, those processes and the daemon (median)",
            format!(
                "{:.1} ms (wrapper's {:.2} ms per call taken out)",
                ms(stats.median),
                ms(results.wrapper_overhead)
            ),
        );
    }
    let after: Vec<&Vec<Vec<String>>> = used.iter().filter_map(|c| c.after.as_ref()).collect();
    if after.is_empty() {
        table.figure(
            "idle polls during the cycle",
            "unknown (no transition back to poll in the log)".to_owned(),
        );
    } else {
        table.figure(
            "idle polls during the cycle, after its cleanup (median)",
            format!(
                "{} ({})",
                number(median_count(
                    after.iter().map(|calls| calls.len()).collect()
                )),
                breakdown(&mean_breakdown(after.into_iter()))
            ),
        );
    }
}

fn idle_rows(table: &mut Table, results: &Results) {
    let Some(idle) = &results.idle else {
        return;
    };
    let per_minute = |value: f64| value * 60.0 / idle.seconds.max(1e-9);
    table.section(&format!(
        "idle, nothing pushed, {:.0} s each, polling once a second",
        idle.seconds
    ));
    let per_poll = idle.calls.len() as f64 / idle.polls.max(1) as f64;
    table.judged(
        "icyci: git processes per poll",
        format!(
            "{per_poll:.1} ({} in {} polls)",
            idle.calls.len(),
            idle.polls
        ),
        "<= 1",
        Some(per_poll <= 1.0),
    );
    table.figure(
        "icyci: git processes per minute",
        format!(
            "{:.0}/min ({})",
            per_minute(idle.calls.len() as f64),
            breakdown(&mean_breakdown(std::iter::once(&idle.calls)))
        ),
    );
    let cpu = |value: Duration| per_minute(value.as_secs_f64());
    let icyci_cpu = idle
        .cpu
        .saturating_sub(results.wrapper_overhead * idle.calls.len() as u32);
    let icycis_poll = idle.fetch_cpu + idle.rev_parse_cpu;
    table.figure(
        "CPU per minute: icyci / fetch + rev-parse / fetch / ls-remote",
        format!(
            "{:.3} / {:.3} / {:.3} / {:.3} s",
            cpu(icyci_cpu),
            cpu(icycis_poll),
            cpu(idle.fetch_cpu),
            cpu(idle.ls_remote_cpu)
        ),
    );
    // Fetch-based polling as icyCI does it: a fetch and a rev-parse.
    let fetch_ratio = ratio(icyci_cpu, icycis_poll);
    table.judged(
        "CPU ratio icyci / fetch polling (fetch + rev-parse)",
        format!("{fetch_ratio:.2}x"),
        "<= 0.5x",
        Some(fetch_ratio <= 0.5),
    );
    table.figure(
        "CPU ratio icyci / a bare fetch per poll",
        format!("{:.2}x", ratio(icyci_cpu, idle.fetch_cpu)),
    );
    table.figure(
        "CPU ratio icyci / ls-remote polling",
        format!("{:.2}x", ratio(icyci_cpu, idle.ls_remote_cpu)),
    );
    table.figure(
        "polls: fetch / ls-remote",
        format!("{} / {}", idle.fetch_polls, idle.ls_remote_polls),
    );
}

fn contention_rows(table: &mut Table, results: &Results) {
    let Some(contention) = &results.contention else {
        return;
    };
    table.section(&format!(
        "contention: {CONTENTION_INSTANCES} instances, one namespace, {} commits pushed one at a time",
        contention.commits
    ));
    let once = contention.tested.iter().filter(|(_, n)| *n == 1).count();
    let mut problems: Vec<String> = contention
        .tested
        .iter()
        .filter(|(_, n)| *n != 1)
        .map(|(commit, n)| format!("{} tested {n}x", &commit[..10.min(commit.len())]))
        .collect();
    if contention.strays > 0 {
        problems.push(format!("{} unknown lines", contention.strays));
    }
    table.judged(
        "commits tested exactly once (with the starting tip)",
        if problems.is_empty() {
            format!("{once}/{}", contention.tested.len())
        } else {
            format!(
                "{once}/{} ({})",
                contention.tested.len(),
                problems.join(", ")
            )
        },
        "all",
        Some(problems.is_empty()),
    );
    match Stats::of(&contention.settle) {
        Some(stats) => table.judged(
            "push -> all instances idle again (median / p90)",
            format!("{:.0} / {:.0} ms", ms(stats.median), ms(stats.p90)),
            "<= 300 ms (median)",
            Some(ms(stats.median) <= 300.0),
        ),
        None => table.judged(
            "push -> all instances idle again",
            "unknown (no transition back to poll in the logs)".to_owned(),
            "<= 300 ms (median)",
            None,
        ),
    }
    if contention.unseen > 0 {
        table.figure(
            "instance-commits without a logged return to poll",
            contention.unseen.to_string(),
        );
    }
}

fn scale_rows(table: &mut Table, results: &Results, small: Option<Stats>) {
    let Some(scale) = &results.scale else {
        return;
    };
    table.section(&format!(
        "scale: source of {} commits, results with {} noted commits (built in {:.1} s)",
        scale.commits,
        scale.notes,
        scale.build.as_secs_f64()
    ));
    let first = scale.first_result.as_secs_f64();
    table.judged(
        "daemon start -> first result (clone included)",
        format!("{first:.2} s"),
        "<= 2 s",
        Some(first <= 2.0),
    );
    if let Some(stats) = Stats::of(&scale.samples) {
        match small {
            Some(small) => {
                let r = ratio(stats.median, small.median);
                table.judged(
                    &format!("cycle latency, median of {}, / small", scale.samples.len()),
                    format!("{:.1} ms, {r:.2}x", ms(stats.median)),
                    "<= 1.2x",
                    Some(r <= 1.2),
                );
            }
            None => table.judged(
                &format!("cycle latency, median of {}", scale.samples.len()),
                format!("{:.1} ms", ms(stats.median)),
                "<= 1.2x small",
                None,
            ),
        }
        if let Some(floor) = Stats::of(&scale.floor.batched.latency) {
            table.figure(
                "plain-git floor (batched) on the same repositories, median",
                format!("{:.1} ms", ms(floor.median)),
            );
            table.figure(
                "ratio icyci / that floor",
                format!("{:.2}x", ratio(stats.median, floor.median)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdowns() {
        let calls = |names: &[&str]| -> Vec<Vec<String>> {
            names.iter().map(|n| vec![n.to_string()]).collect()
        };
        let sets = [calls(&["fetch", "rev-parse", "fetch"]), calls(&["fetch"])];
        let mean = mean_breakdown(sets.iter());
        assert_eq!(breakdown(&mean), "fetch 1.5, rev-parse 0.5");
        assert_eq!(median_count(vec![3, 1, 2, 10]), 2.5);
        assert_eq!(number(2.0), "2");
    }
}
