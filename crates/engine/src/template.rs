//! Prompt templates (Jinja syntax through minijinja).
//!
//! A prompt sees `deps.<id>.output`, `input` and `goal`. Templates are
//! checked when a goal is accepted and rendered when its task is released.

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use workbus_proto::Id;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // A typo such as `deps.gahter` must fail loudly, not render as "".
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env
    })
}

const SCOPE: &[&str] = &["deps", "input", "goal", "task", "attempt"];

/// Checks a prompt's syntax and that it only reads what is in scope: its
/// own dependencies (`after`), `input` and `goal`.
pub fn check_prompt(prompt: Option<&str>, after: &[Id]) -> Result<(), String> {
    let Some(prompt) = prompt else { return Ok(()) };
    let tmpl = env().template_from_str(prompt).map_err(describe)?;
    for var in tmpl.undeclared_variables(true) {
        let mut parts = var.split('.');
        let top = parts.next().unwrap_or_default();
        if !SCOPE.contains(&top) && env().globals().all(|(k, _)| k != top) {
            return Err(format!(
                "uses {var:?}, which is not defined (a prompt sees deps, input and goal)"
            ));
        }
        if top == "deps"
            && let Some(dep) = parts.next()
            && !after.iter().any(|a| a.as_str() == dep)
        {
            return Err(format!(
                "uses deps.{dep}, but {dep:?} is not in this task's `after`"
            ));
        }
    }
    Ok(())
}

/// Renders a prompt in `ctx`.
pub fn render(prompt: &str, ctx: &impl Serialize) -> Result<String, String> {
    env().render_str(prompt, ctx).map_err(describe)
}

/// Renders an argv element for a spawned worker.
pub fn render_arg(arg: &str, ctx: &impl Serialize) -> Result<String, String> {
    if !arg.contains("{{") && !arg.contains("{%") {
        return Ok(arg.to_string());
    }
    render(arg, ctx)
}

fn describe(e: minijinja::Error) -> String {
    let mut s = match e.line() {
        Some(l) => format!("line {l}: {}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_strict_undefined() {
        let ctx = serde_json::json!({"deps": {"a": {"output": "x"}}, "input": {"n": 1}});
        assert_eq!(
            render("{{ deps.a.output }}-{{ input.n }}", &ctx).unwrap(),
            "x-1"
        );
        let e = render("{{ deps.b.output }}", &ctx).unwrap_err();
        assert!(e.contains("undefined"), "{e}");
    }

    #[test]
    fn args_without_markup_are_copied() {
        assert_eq!(render_arg("--flag={x}", &()).unwrap(), "--flag={x}");
    }
}
