//! `workbusctl graph GOAL --format dot|mermaid`.

use std::process::ExitCode;

use anyhow::Context;
use workbus_bus::Bus;
use workbus_proto::Id;
use workbus_proto::goal::Goal;
use workbus_proto::report::Report;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

pub fn run(bus: &Bus, goal: &str, format: GraphFormat) -> anyhow::Result<ExitCode> {
    let id = Id::new(goal).map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(bus.goal_path(&id))
        .with_context(|| format!("no accepted goal {id} (goals/{id}.json)"))?;
    let g: Goal = serde_json::from_str(&text)?;
    let report: Option<Report> = std::fs::read_to_string(bus.report_path(&id))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let state = |t: &Id| {
        report
            .as_ref()
            .and_then(|r| r.tasks.get(t.as_str()))
            .map(|t| t.state.as_str())
    };
    // A planned goal's tasks are in its report.
    let mut edges: Vec<(String, String)> = Vec::new();
    let mut nodes: Vec<(String, String)> = Vec::new();
    for t in &g.tasks {
        let needs: Vec<&str> = t.needs.iter().map(|c| c.as_str()).collect();
        nodes.push((
            t.id.to_string(),
            format!(
                "{}\\n[{}]{}",
                t.id,
                needs.join(", "),
                state(&t.id).map(|s| format!("\\n{s}")).unwrap_or_default()
            ),
        ));
        for a in &t.after {
            edges.push((a.to_string(), t.id.to_string()));
        }
    }
    match format {
        GraphFormat::Dot => {
            println!("digraph \"{id}\" {{");
            println!("  rankdir=LR;");
            for (n, label) in &nodes {
                println!("  \"{n}\" [label=\"{label}\"];");
            }
            for (a, b) in &edges {
                println!("  \"{a}\" -> \"{b}\";");
            }
            println!("}}");
        }
        GraphFormat::Mermaid => {
            println!("graph LR");
            for (n, label) in &nodes {
                println!("  {n}[\"{}\"]", label.replace("\\n", "<br/>"));
            }
            for (a, b) in &edges {
                println!("  {a} --> {b}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
