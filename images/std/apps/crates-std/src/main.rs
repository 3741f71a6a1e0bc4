//! `crates-std`: real crates from crates.io, unchanged, in a guest.
//!
//! `regex` finds, captures and replaces in a text; `serde_json` parses a
//! document, reads fields out of it, and writes a value back as text. Each
//! result is checked against the answer worked out by hand. Prints
//! `crates-std: ok` and exits 0, or says which check failed and exits 1.

use hermit as _;
use regex::Regex;
use serde_json::{Value, json};
use std::process::ExitCode;

const LOG: &str = "2024-05-19 boot ok; 2024-05-20 disk slow; 2025-01-02 boot ok";

const DOCUMENT: &str = r#"{
    "name": "rguest",
    "guests": [
        {"name": "hello", "memory_mib": 16},
        {"name": "threads-std", "memory_mib": 32}
    ],
    "ring": 1
}"#;

fn main() -> ExitCode {
    let failures: Vec<String> = [regex_checks(), json_checks()].concat();
    if failures.is_empty() {
        println!("crates-std: ok: regex and serde_json gave the expected answers");
        ExitCode::SUCCESS
    } else {
        for failure in failures {
            println!("crates-std: FAILED: {failure}");
        }
        ExitCode::from(1)
    }
}

fn regex_checks() -> Vec<String> {
    let date = Regex::new(r"(?<year>\d{4})-(?<month>\d{2})-(?<day>\d{2})").expect("a valid regex");
    let years: Vec<&str> = date
        .captures_iter(LOG)
        .map(|c| c.name("year").unwrap().as_str())
        .collect();
    let swapped = date.replace_all(LOG, "$day/$month/$year");
    let boots = Regex::new(r"\bboot ok\b")
        .expect("a valid regex")
        .find_iter(LOG)
        .count();
    let mut failures = Vec::new();
    compare(
        &mut failures,
        "years",
        format!("{years:?}"),
        r#"["2024", "2024", "2025"]"#,
    );
    compare(
        &mut failures,
        "replace_all",
        swapped.into_owned(),
        "19/05/2024 boot ok; 20/05/2024 disk slow; 02/01/2025 boot ok",
    );
    compare(&mut failures, "boots", boots.to_string(), "2");
    failures
}

fn json_checks() -> Vec<String> {
    let mut failures = Vec::new();
    let document: Value = match serde_json::from_str(DOCUMENT) {
        Ok(value) => value,
        Err(e) => return vec![format!("parsing the document: {e}")],
    };
    let memory: u64 = document["guests"].as_array().map_or(0, |guests| {
        guests.iter().filter_map(|g| g["memory_mib"].as_u64()).sum()
    });
    compare(
        &mut failures,
        "name",
        document["name"].to_string(),
        "\"rguest\"",
    );
    compare(
        &mut failures,
        "second guest",
        document["guests"][1]["name"].to_string(),
        "\"threads-std\"",
    );
    compare(&mut failures, "total memory", memory.to_string(), "48");
    let written = json!({"ok": true, "ring": document["ring"], "list": [1, 2.5, null]}).to_string();
    compare(
        &mut failures,
        "written",
        written,
        r#"{"list":[1,2.5,null],"ok":true,"ring":1}"#,
    );
    compare(
        &mut failures,
        "bad input",
        serde_json::from_str::<Value>("{\"a\":")
            .is_err()
            .to_string(),
        "true",
    );
    failures
}

fn compare(failures: &mut Vec<String>, what: &str, seen: String, expected: &str) {
    if seen != expected {
        failures.push(format!("{what}: got {seen}, expected {expected}"));
    }
}
