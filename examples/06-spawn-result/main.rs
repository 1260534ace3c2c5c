//! Example 06: spawn expression evaluators and collect their results; one fails.
//!
//! Each expression is evaluated by its own task. `bla*bla` names an unknown variable, so
//! its task returns an error, which reaches the spawner as a failed result. Tasks are
//! spawned as slots become free, so any number of expressions works with any number of
//! workers.
//!
//! Run with `cargo run --example 06-spawn-result`.

use std::collections::{BTreeMap, VecDeque};

use parvm::vm::{Message, Runtime, Spawn, TaskContext, TaskId, Tasks};

/// Evaluates an integer expression with `+ - * / **` and parentheses.
fn evaluate(_ctx: &TaskContext, expr: String) -> Result<i64, String> {
    let tokens = tokenize(&expr)?;
    let mut parser = Parser { tokens, at: 0 };
    let value = parser.sum()?;
    match parser.tokens.get(parser.at) {
        None => Ok(value),
        Some(token) => Err(format!("unexpected `{token}` in `{expr}`")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::start(Tasks::new().register("evaluate", evaluate))?;
    let vm = runtime.vm().build()?;

    let expressions = ["1+1", "5*5", "bla*bla", "2**7"];
    let mut waiting: VecDeque<&str> = expressions.iter().copied().collect();
    let mut task_of: BTreeMap<TaskId, &str> = BTreeMap::new();
    let mut results: BTreeMap<&str, Result<i64, String>> = BTreeMap::new();
    let mut running = 0usize;

    while !waiting.is_empty() || running > 0 {
        // Fill the free slots.
        while let Some(&expr) = waiting.front() {
            let ids = vm.spawn(Spawn::task("evaluate", &expr.to_owned()))?;
            let Some(&id) = ids.first() else { break };
            println!("Spawning evaluator for: {expr}\n  Task ID: {id}");
            waiting.pop_front();
            task_of.insert(id, expr);
            running += 1;
        }
        // Then wait for results and exits.
        match vm.recv()? {
            Message::TaskResult { task, outcome } => {
                let expr = task_of[&task];
                let result = outcome
                    .map_err(|failure| failure.message)
                    .and_then(|value| value.decode::<i64>().map_err(|e| e.to_string()));
                results.insert(expr, result);
            }
            Message::TaskExit { .. } => running -= 1,
            _ => {}
        }
    }

    println!();
    for expr in expressions {
        match &results[expr] {
            Ok(value) => println!("{expr}={value}"),
            Err(error) => println!("{expr}=[EVAL ERROR] {error}"),
        }
    }
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

fn tokenize(expr: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_digit() || c.is_alphabetic() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
                word.push(c);
                chars.next();
            }
            tokens.push(word);
        } else if c == '*' {
            chars.next();
            if chars.peek() == Some(&'*') {
                chars.next();
                tokens.push("**".to_owned());
            } else {
                tokens.push("*".to_owned());
            }
        } else if "+-/()".contains(c) {
            chars.next();
            tokens.push(c.to_string());
        } else {
            return Err(format!("unexpected character `{c}` in `{expr}`"));
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn sum(&mut self) -> Result<i64, String> {
        let mut value = self.product()?;
        while let Some(op @ ("+" | "-")) = self.peek() {
            let add = op == "+";
            self.at += 1;
            let rhs = self.product()?;
            value = if add {
                value.checked_add(rhs)
            } else {
                value.checked_sub(rhs)
            }
            .ok_or("overflow")?;
        }
        Ok(value)
    }

    fn product(&mut self) -> Result<i64, String> {
        let mut value = self.power()?;
        while let Some(op @ ("*" | "/")) = self.peek() {
            let multiply = op == "*";
            self.at += 1;
            let rhs = self.power()?;
            value = if multiply {
                value.checked_mul(rhs).ok_or("overflow")?
            } else {
                value.checked_div(rhs).ok_or("division by zero")?
            };
        }
        Ok(value)
    }

    fn power(&mut self) -> Result<i64, String> {
        let base = self.atom()?;
        if self.peek() == Some("**") {
            self.at += 1;
            let exponent = self.power()?;
            let exponent = u32::try_from(exponent).map_err(|_| "negative or huge exponent")?;
            return base
                .checked_pow(exponent)
                .ok_or_else(|| "overflow".to_owned());
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<i64, String> {
        let token = self
            .peek()
            .ok_or("the expression ends too early")?
            .to_owned();
        self.at += 1;
        match token.as_str() {
            "(" => {
                let value = self.sum()?;
                if self.peek() != Some(")") {
                    return Err("missing `)`".to_owned());
                }
                self.at += 1;
                Ok(value)
            }
            "-" => Ok(-self.atom()?),
            number if number.chars().all(|c| c.is_ascii_digit()) => number
                .parse()
                .map_err(|e| format!("bad number `{number}`: {e}")),
            name => Err(format!("name `{name}` is not defined")),
        }
    }
}
