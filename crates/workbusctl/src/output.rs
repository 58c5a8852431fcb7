//! Printing for people.

use workbus_proto::Timestamp;
use workbus_proto::report::Report;

/// A goal report as a table.
pub fn print_report(r: &Report) {
    println!(
        "goal {}: {} in {}",
        r.goal,
        r.outcome,
        workbus_engine::fmt_duration(r.finished_at.since(r.started_at))
    );
    if let Some(reason) = &r.reason {
        println!("  reason: {reason}");
    }
    let width = r.tasks.keys().map(|k| k.len()).max().unwrap_or(4).max(4);
    println!(
        "  {:<width$}  {:<9}  {:>8}  {:<12}  {:>8}  detail",
        "task", "state", "attempts", "worker", "time"
    );
    let mut tasks: Vec<_> = r.tasks.iter().collect();
    tasks.sort_by_key(|(id, t)| (t.started_at.unwrap_or(Timestamp(u64::MAX)), (*id).clone()));
    for (id, t) in tasks {
        let time = match (t.started_at, t.finished_at) {
            (Some(s), Some(f)) => workbus_engine::fmt_duration(f.since(s)),
            _ => "-".into(),
        };
        let detail = match (&t.reason, &t.output) {
            (Some(r), _) => r.clone(),
            (None, Some(o)) => preview(o),
            _ => String::new(),
        };
        println!(
            "  {:<width$}  {:<9}  {:>8}  {:<12}  {:>8}  {detail}",
            id,
            t.state.as_str(),
            t.attempts,
            t.worker.as_deref().unwrap_or("-"),
            time
        );
    }
    if !r.usage.is_empty() {
        let u: Vec<String> = r.usage.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  usage: {}", u.join(", "));
    }
}

/// The first line of a value, shortened.
pub fn preview(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(60).collect::<String>())
    } else {
        line.to_string()
    }
}
