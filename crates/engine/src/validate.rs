//! Goal validation: text in, a normalized [`Goal`] or a precise error out.
//!
//! The daemon and `workbusctl validate`/`submit` call the same function, so a
//! person sees the daemon's exact words before dropping a file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::Value;
use workbus_proto::fleet::locate_key;
use workbus_proto::goal::{Goal, GoalFile, GoalTask, PLAN_TASK_ID, PlanOutput, TaskSpec};
use workbus_proto::parse::{self, Format};
use workbus_proto::{Id, SCHEMA_VERSION, Timestamp};

use crate::dag;
use crate::template;

/// Size and count limits (from `workbusd.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_goal_bytes: u64,
    pub max_tasks_per_goal: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let c = workbus_proto::config::DaemonConfig::default();
        Limits {
            max_goal_bytes: c.max_goal_bytes,
            max_tasks_per_goal: c.max_tasks_per_goal,
        }
    }
}

/// Why a goal was refused: what, and where when known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct GoalError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl GoalError {
    fn new(message: impl Into<String>) -> Self {
        GoalError {
            line: None,
            column: None,
            message: message.into(),
        }
    }
    fn at(mut self, pos: Option<(usize, usize)>) -> Self {
        if let Some((l, c)) = pos {
            self.line = Some(l);
            self.column = Some(c);
        }
        self
    }
}

impl fmt::Display for GoalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            (Some(l), None) => write!(f, "line {l}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl From<parse::ParseError> for GoalError {
    fn from(e: parse::ParseError) -> Self {
        GoalError {
            line: e.line,
            column: e.column,
            message: e.message,
        }
    }
}

/// The id a goal gets from its file name when it sets none.
pub fn id_from_file_name(file_name: &str) -> Result<Id, GoalError> {
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name, |(stem, _ext)| stem);
    Id::new(stem).map_err(|e| {
        GoalError::new(format!(
            "the goal sets no id and its file name cannot be one ({e}); add `id = \"...\"`"
        ))
    })
}

/// Validates the text of a goal file.
///
/// `file_name` gives the default id (its stem). `now` fixes `accepted_at`
/// and the absolute deadline.
pub fn validate_goal(
    text: &[u8],
    format: Format,
    file_name: &str,
    limits: &Limits,
    now: Timestamp,
) -> Result<Goal, GoalError> {
    if text.len() as u64 > limits.max_goal_bytes {
        return Err(GoalError::new(format!(
            "the file is {} bytes; the limit (max_goal_bytes) is {}",
            text.len(),
            limits.max_goal_bytes
        )));
    }
    let text = std::str::from_utf8(text).map_err(|e| {
        let (line, column) = parse::line_col(
            &String::from_utf8_lossy(&text[..e.valid_up_to()]),
            e.valid_up_to(),
        );
        GoalError::new("the file is not valid UTF-8").at(Some((line, column)))
    })?;
    let file: GoalFile = parse::from_text(format, text)?;
    let id = match file.id.clone() {
        Some(id) => id,
        None => id_from_file_name(file_name)?,
    };
    let locate = |index: usize, key: &str| match format {
        Format::Toml => locate_key(text, "task", index, key),
        Format::Json => None,
    };
    let tasks = match (&file.plan, file.task.is_empty()) {
        (Some(_), false) => {
            return Err(GoalError::new(
                "a goal has either tasks or a plan, not both",
            ));
        }
        (None, true) => {
            return Err(GoalError::new(
                "the goal has no tasks: add at least one [[task]] (or a plan)",
            ));
        }
        (Some(plan), true) => {
            template::check_prompt(plan.prompt.as_deref(), &[])
                .map_err(|m| GoalError::new(format!("plan: prompt: {m}")))?;
            vec![GoalTask {
                id: Id::new(PLAN_TASK_ID).expect("a valid id"),
                needs: plan.needs.clone(),
                after: vec![],
                input: plan.input.clone(),
                prompt: plan.prompt.clone(),
                timeout: plan.timeout,
                retries: plan.retries.unwrap_or(0),
                output_schema: None,
            }]
        }
        (None, false) => check_tasks(&file.task, limits, &[], &locate)?,
    };
    if let Some(d) = file.deadline
        && d.0.is_zero()
    {
        return Err(GoalError::new("deadline must be more than zero"));
    }
    Ok(Goal {
        schema_version: SCHEMA_VERSION,
        id,
        priority: file.priority,
        accepted_at: now,
        deadline: file.deadline,
        deadline_at: file.deadline.map(|d| now.plus(d.0)),
        tasks,
        plan: file.plan,
        source: None,
    })
}

/// Validates a planner's output (`{"task": [...]}`) for a goal that already
/// holds the tasks in `existing` (the planner itself).
pub fn validate_plan(
    output: &Value,
    limits: &Limits,
    existing: &[Id],
) -> Result<Vec<GoalTask>, GoalError> {
    let plan: PlanOutput = serde_json::from_value(output.clone())
        .map_err(|e| GoalError::new(format!("the plan is not a task list: {e}")))?;
    if plan.task.is_empty() {
        return Err(GoalError::new("the plan has no tasks"));
    }
    check_tasks(&plan.task, limits, existing, &|_, _| None)
}

/// Finds the line and column of a task's key in the goal's text.
type Locate<'a> = dyn Fn(usize, &str) -> Option<(usize, usize)> + 'a;

/// Checks a task list: count, ids, dependencies, cycles, templates, schemas.
fn check_tasks(
    specs: &[TaskSpec],
    limits: &Limits,
    reserved: &[Id],
    locate: &Locate<'_>,
) -> Result<Vec<GoalTask>, GoalError> {
    if specs.len() > limits.max_tasks_per_goal {
        return Err(GoalError::new(format!(
            "the goal has {} tasks; the limit (max_tasks_per_goal) is {}",
            specs.len(),
            limits.max_tasks_per_goal
        )));
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(specs.len());
    for r in reserved {
        index.insert(r.as_str(), usize::MAX);
    }
    for (i, t) in specs.iter().enumerate() {
        if index.insert(t.id.as_str(), i).is_some() {
            return Err(
                GoalError::new(format!("duplicate task id {:?}", t.id.as_str()))
                    .at(locate(i, "id")),
            );
        }
    }
    for (i, t) in specs.iter().enumerate() {
        let mut seen = HashSet::new();
        for a in &t.after {
            if a == &t.id {
                return Err(GoalError::new(format!(
                    "task {:?} lists itself in `after`",
                    t.id.as_str()
                ))
                .at(locate(i, "after")));
            }
            match index.get(a.as_str()) {
                None => {
                    return Err(GoalError::new(format!(
                        "task {:?}: `after` names {:?}, which is not a task of this goal",
                        t.id.as_str(),
                        a.as_str()
                    ))
                    .at(locate(i, "after")));
                }
                Some(&usize::MAX) => {
                    return Err(GoalError::new(format!(
                        "task {:?}: `after` names {:?}, which a planned task cannot depend on",
                        t.id.as_str(),
                        a.as_str()
                    )));
                }
                Some(_) => {}
            }
            if !seen.insert(a.as_str()) {
                return Err(GoalError::new(format!(
                    "task {:?} lists {:?} twice in `after`",
                    t.id.as_str(),
                    a.as_str()
                ))
                .at(locate(i, "after")));
            }
        }
        if let Some(r) = t.retries
            && r > 100
        {
            return Err(GoalError::new(format!(
                "task {:?}: retries must be at most 100, not {r}",
                t.id.as_str()
            ))
            .at(locate(i, "retries")));
        }
        if let Some(d) = t.timeout
            && d.0.is_zero()
        {
            return Err(GoalError::new(format!(
                "task {:?}: timeout must be more than zero",
                t.id.as_str()
            ))
            .at(locate(i, "timeout")));
        }
    }
    let edges: Vec<Vec<usize>> = specs
        .iter()
        .map(|t| t.after.iter().map(|a| index[a.as_str()]).collect())
        .collect();
    if let Some(cycle) = dag::find_cycle(&edges) {
        // Spelled in the order things run: `a → b` means b runs after a.
        let names: Vec<&str> = cycle.iter().rev().map(|&i| specs[i].id.as_str()).collect();
        return Err(
            GoalError::new(format!("the tasks form a cycle: {}", names.join(" → ")))
                .at(locate(cycle[cycle.len() - 1], "after")),
        );
    }
    for (i, t) in specs.iter().enumerate() {
        template::check_prompt(t.prompt.as_deref(), &t.after).map_err(|m| {
            GoalError::new(format!("task {:?}: prompt: {m}", t.id.as_str())).at(locate(i, "prompt"))
        })?;
        if let Some(schema) = &t.output_schema {
            jsonschema::validator_for(schema).map_err(|e| {
                GoalError::new(format!(
                    "task {:?}: output_schema is not a valid JSON Schema: {e}",
                    t.id.as_str()
                ))
                .at(locate(i, "output_schema"))
            })?;
        }
    }
    Ok(specs
        .iter()
        .map(|t| GoalTask {
            id: t.id.clone(),
            needs: dedup(&t.needs),
            after: t.after.clone(),
            input: t.input.clone(),
            prompt: t.prompt.clone(),
            timeout: t.timeout,
            retries: t.retries.unwrap_or(0),
            output_schema: t.output_schema.clone(),
        })
        .collect())
}

fn dedup<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let set: BTreeMap<&T, ()> = v.iter().map(|x| (x, ())).collect();
    set.into_keys().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Goal, GoalError> {
        validate_goal(
            text.as_bytes(),
            Format::Toml,
            "g.toml",
            &Limits::default(),
            Timestamp(1000),
        )
    }

    fn err(text: &str) -> String {
        check(text).unwrap_err().to_string()
    }

    fn check_json(bytes: &[u8]) -> Result<Goal, GoalError> {
        validate_goal(
            bytes,
            Format::Json,
            "x.json",
            &Limits::default(),
            Timestamp(0),
        )
    }

    #[test]
    fn the_seed_goal_is_valid() {
        let g = check(
            r#"
id = "release-notes"
deadline = "30m"
[[task]]
id = "gather"
needs = ["git"]
input = { repo = "/srv/app" }
timeout = "5m"
retries = 2
[[task]]
id = "narrate"
needs = ["llm"]
after = ["gather"]
prompt = "Notes for:\n{{ deps.gather.output }}"
output_schema = { type = "object", required = ["markdown"] }
"#,
        )
        .unwrap();
        assert_eq!(g.id.as_str(), "release-notes");
        assert_eq!(g.tasks.len(), 2);
        assert_eq!(g.tasks[0].retries, 2);
        assert_eq!(g.deadline_at, Some(Timestamp(1000 + 30 * 60 * 1000)));
    }

    #[test]
    fn default_id_is_the_stem() {
        let g = check("[[task]]\nid = \"a\"\n").unwrap();
        assert_eq!(g.id.as_str(), "g");
        let e = validate_goal(
            b"[[task]]\nid = \"a\"\n",
            Format::Toml,
            "my goal.toml",
            &Limits::default(),
            Timestamp(0),
        )
        .unwrap_err();
        assert!(e.message.contains("add `id"), "{e}");
    }

    /// Each bad goal of SPEC §3 with the words its error must contain.
    #[test]
    fn bad_goals_have_precise_errors() {
        let cases: &[(&str, &str)] = &[
            ("[[task]]\nid = \"a\"\nneeds = [\"x\"\n", "line 3"),
            (
                "[[task]]\nid = \"a\"\nneeds = [\"x\"]\ncolour = 1\n",
                "line 4, column 1: unknown field `colour`",
            ),
            (
                "[[task]]\nid = \"a\"\n[[task]]\nid = \"a\"\n",
                "line 4, column 1: duplicate task id \"a\"",
            ),
            (
                "[[task]]\nid = \"a\"\nafter = [\"b\"]\n",
                "line 3, column 1: task \"a\": `after` names \"b\", which is not a task of this goal",
            ),
            (
                "[[task]]\nid = \"a\"\nafter = [\"b\"]\n[[task]]\nid = \"b\"\nafter = [\"a\"]\n",
                "the tasks form a cycle: a → b → a",
            ),
            ("[[task]]\nid = \"a\"\nafter = [\"a\"]\n", "lists itself"),
            (
                "[[task]]\nid = \"a\"\ntimeout = \"5 parsecs\"\n",
                "line 3, column 11: invalid duration \"5 parsecs\"",
            ),
            (
                "deadline = \"soon\"\n[[task]]\nid = \"a\"\n",
                "invalid duration \"soon\"",
            ),
            ("[[task]]\nid = \"a/b\"\n", "contains '/'"),
            (
                "[[task]]\nid = \"a\"\nprompt = \"{{ deps.a.output \"\n",
                "prompt:",
            ),
            (
                "[[task]]\nid = \"a\"\noutput_schema = { type = 12 }\n",
                "output_schema is not a valid JSON Schema",
            ),
            ("id = \"g\"\n", "has no tasks"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.contains(want),
                "for {text:?}\n got: {got}\nwant: {want}"
            );
        }
    }

    #[test]
    fn long_cycles_are_spelled_out() {
        let e = err(
            "[[task]]\nid = \"a\"\n[[task]]\nid = \"b\"\nafter = [\"a\", \"d\"]\n[[task]]\nid = \"c\"\nafter = [\"b\"]\n[[task]]\nid = \"d\"\nafter = [\"c\"]\n",
        );
        assert!(
            e.contains("b → c → d → b")
                || e.contains("c → d → b → c")
                || e.contains("d → b → c → d"),
            "{e}"
        );
    }

    #[test]
    fn limits() {
        let limits = Limits {
            max_goal_bytes: 40,
            max_tasks_per_goal: 2,
        };
        let text = "[[task]]\nid = \"a\"\n[[task]]\nid = \"b\"\n[[task]]\nid = \"c\"\n";
        let e = validate_goal(
            text.as_bytes(),
            Format::Toml,
            "g.toml",
            &limits,
            Timestamp(0),
        )
        .unwrap_err();
        assert!(e.message.contains("limit (max_goal_bytes) is 40"), "{e}");
        let limits = Limits {
            max_goal_bytes: 1000,
            max_tasks_per_goal: 2,
        };
        let e = validate_goal(
            text.as_bytes(),
            Format::Toml,
            "g.toml",
            &limits,
            Timestamp(0),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("3 tasks; the limit (max_tasks_per_goal) is 2"),
            "{e}"
        );
    }

    #[test]
    fn json_goals() {
        let g =
            check_json(br#"{"id":"j","task":[{"id":"a","needs":["x"]},{"id":"b","after":["a"]}]}"#)
                .unwrap();
        assert_eq!(g.tasks[1].after[0].as_str(), "a");
        let e = check_json(b"{\"task\": [\n {\"id\": \"a\", \"nedds\": []}]}").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unknown field `nedds`"), "{e}");
        let e = check_json(b"\xff\xfe").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e}");
    }

    #[test]
    fn prompts_may_only_use_their_dependencies() {
        let e =
            err("[[task]]\nid = \"a\"\n[[task]]\nid = \"b\"\nprompt = \"{{ deps.a.output }}\"\n");
        assert!(e.contains("deps.a") && e.contains("after"), "{e}");
        let e = err("[[task]]\nid = \"a\"\nprompt = \"{{ secrets }}\"\n");
        assert!(e.contains("secrets"), "{e}");
        check("[[task]]\nid = \"a\"\nprompt = \"{{ input.x }} {{ goal.id }} {% for k in input %}{{ k }}{% endfor %}\"\n").unwrap();
    }

    #[test]
    fn plans() {
        let g = check("plan = { needs = [\"planner\"], prompt = \"plan it\" }\n").unwrap();
        assert_eq!(g.tasks.len(), 1);
        assert_eq!(g.tasks[0].id.as_str(), PLAN_TASK_ID);
        let existing = [Id::new("plan").unwrap()];
        let ok = serde_json::json!({"task": [{"id": "a"}, {"id": "b", "after": ["a"]}]});
        assert_eq!(
            validate_plan(&ok, &Limits::default(), &existing)
                .unwrap()
                .len(),
            2
        );
        let cyc =
            serde_json::json!({"task": [{"id": "a", "after": ["b"]}, {"id": "b", "after": ["a"]}]});
        assert!(
            validate_plan(&cyc, &Limits::default(), &existing)
                .unwrap_err()
                .message
                .contains("cycle")
        );
        let clash = serde_json::json!({"task": [{"id": "plan"}]});
        assert!(
            validate_plan(&clash, &Limits::default(), &existing)
                .unwrap_err()
                .message
                .contains("duplicate")
        );
        assert!(validate_plan(&serde_json::json!("nope"), &Limits::default(), &existing).is_err());
    }
}
