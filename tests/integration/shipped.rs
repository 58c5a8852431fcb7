//! The files the project ships must keep parsing, and say what the code does.

use std::path::Path;

use workbus_proto::config::DaemonConfig;
use workbus_proto::fleet::Fleet;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn the_shipped_workbusd_toml_is_the_defaults() {
    let path = repo("config/workbusd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        DaemonConfig::parse(&text, &path).unwrap(),
        DaemonConfig::default()
    );
}

#[test]
fn the_shipped_fleet_and_demo_goal_are_valid() {
    let path = repo("config/fleet.toml");
    let fleet = Fleet::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let caps: Vec<String> = fleet
        .worker
        .iter()
        .flat_map(|w| w.capabilities.iter().map(|c| c.to_string()))
        .collect();
    let goal = std::fs::read(repo("config/demo/goal.toml")).unwrap();
    let g = workbus_engine::validate_goal(
        &goal,
        workbus_proto::Format::Toml,
        "goal.toml",
        &Default::default(),
        workbus_proto::Timestamp(0),
    )
    .unwrap();
    for t in &g.tasks {
        for n in &t.needs {
            assert!(
                caps.contains(&n.to_string()),
                "the shipped fleet offers {n}"
            );
        }
    }
}

/// Example records of every format, checked in under docs/examples/, must
/// keep parsing.
#[test]
fn example_records_parse() {
    use workbus_proto::{control, report, result, status, task, worker};
    let dir = repo("docs/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let kind = name.split('.').next().unwrap();
        let r: Result<(), String> = match kind {
            "goal" => workbus_engine::validate_goal(
                text.as_bytes(),
                workbus_proto::Format::from_path(&path).unwrap(),
                &name,
                &Default::default(),
                workbus_proto::Timestamp(0),
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
            "task" => serde_json::from_str::<task::TaskRecord>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "result" => serde_json::from_str::<result::ResultRecord>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "worker" => serde_json::from_str::<worker::WorkerAd>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "report" => serde_json::from_str::<report::Report>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "status" => serde_json::from_str::<status::Status>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "control" => serde_json::from_str::<control::ControlRecord>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "accepted" => serde_json::from_str::<workbus_proto::goal::Goal>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown example kind {other}")),
        };
        r.unwrap_or_else(|e| panic!("{name}: {e}"));
        seen += 1;
    }
    assert!(seen >= 9, "examples of every format: {seen}");
}
