//! `args-std`: a guest's command line as std's `env::args` and `env::vars`.
//!
//! The runtime reads the text after `args-std/` in `guests=args-std/...`
//! as leading `KEY=VALUE` words (the environment) and then the arguments.
//! This program prints what it got and checks it against what it was
//! told in its own command line: its first argument is the number of
//! arguments that follow it, and the variable `ARGS_STD_VARS`, when set,
//! is the number of variables in its environment (itself included). So
//! `guests=args-std/2/x` is wrong and `args-std/ARGS_STD_VARS=2 LANG=C 2 x y`
//! right (when the host passes words with spaces). Prints `args-std: ok`
//! and exits 0, or says what was wrong and exits 1.

use hermit as _;
use std::env;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().collect();
    let vars: Vec<(String, String)> = env::vars().collect();
    println!("args-std: args {args:?}");
    println!("args-std: env {vars:?}");
    let failures: Vec<String> = [check_arguments(&args), check_environment(&vars)]
        .into_iter()
        .flatten()
        .collect();
    if failures.is_empty() {
        println!(
            "args-std: ok: {} arguments, {} variables, as announced",
            args.len() - 1,
            vars.len()
        );
        ExitCode::SUCCESS
    } else {
        for failure in failures {
            println!("args-std: FAILED: {failure}");
        }
        ExitCode::from(1)
    }
}

/// `argv[1]` must be the count of the arguments after it.
fn check_arguments(args: &[String]) -> Option<String> {
    let Some(announced) = args.get(1) else {
        return Some("no arguments: run me as guests=args-std/<N> <N words>".into());
    };
    match announced.parse::<usize>() {
        Ok(n) if n == args.len() - 2 => None,
        Ok(n) => Some(format!(
            "announced {n} arguments after the count, got {}: {:?}",
            args.len() - 2,
            &args[2..]
        )),
        Err(_) => Some(format!("the first argument, {announced:?}, is not a count")),
    }
}

/// `ARGS_STD_VARS`, when set, must be the count of variables.
fn check_environment(vars: &[(String, String)]) -> Option<String> {
    let announced = env::var("ARGS_STD_VARS").ok()?;
    match announced.parse::<usize>() {
        Ok(n) if n == vars.len() => None,
        _ => Some(format!(
            "ARGS_STD_VARS={announced} but the environment has {} variables",
            vars.len()
        )),
    }
}
