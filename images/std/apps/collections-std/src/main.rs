//! `collections-std`: std's collections, sorting and formatting on real
//! data.
//!
//! Counts the words of a paragraph in a `HashMap`, orders them in a
//! `BTreeMap` by count, sorts a vector of records, formats a table with
//! padding and precision, and checks each result against the answer worked
//! out by hand. Prints `collections-std: ok` and exits 0, or says which
//! check failed and exits 1.

use hermit as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::process::ExitCode;

const TEXT: &str = "the quick brown fox jumps over the lazy dog and the dog \
                    sleeps while the fox runs over the hill and far away";

/// Planets: name, mean radius in km, moons.
const PLANETS: [(&str, u32, u32); 8] = [
    ("Mercury", 2440, 0),
    ("Venus", 6052, 0),
    ("Earth", 6371, 1),
    ("Mars", 3390, 2),
    ("Jupiter", 69911, 95),
    ("Saturn", 58232, 146),
    ("Uranus", 25362, 28),
    ("Neptune", 24622, 16),
];

fn main() -> ExitCode {
    let mut failures = Vec::new();
    let mut check = |what: &str, ok: bool, seen: String| {
        if !ok {
            failures.push(format!("{what}: got {seen}"));
        }
    };

    let counts = word_counts(TEXT);
    check(
        "distinct words",
        counts.len() == 15,
        counts.len().to_string(),
    );
    check(
        "count of `the`",
        counts["the"] == 5,
        counts["the"].to_string(),
    );
    let by_count = words_by_count(&counts);
    let top: Vec<&str> = by_count
        .iter()
        .next_back()
        .map_or(vec![], |(_, w)| w.iter().copied().collect());
    check("most frequent", top == ["the"], format!("{top:?}"));
    let twice: Vec<&str> = by_count
        .get(&2)
        .map_or(vec![], |w| w.iter().copied().collect());
    check(
        "words seen twice",
        twice == ["and", "dog", "fox", "over"],
        format!("{twice:?}"),
    );

    let mut planets = PLANETS.to_vec();
    planets.sort_by_key(|p| std::cmp::Reverse(p.1));
    let largest: Vec<&str> = planets.iter().take(3).map(|p| p.0).collect();
    check(
        "largest three",
        largest == ["Jupiter", "Saturn", "Uranus"],
        format!("{largest:?}"),
    );
    planets.sort_by_key(|p| (p.2, p.0));
    let moonless: Vec<&str> = planets
        .iter()
        .take_while(|p| p.2 == 0)
        .map(|p| p.0)
        .collect();
    check(
        "moonless",
        moonless == ["Mercury", "Venus"],
        format!("{moonless:?}"),
    );
    let moons: u32 = PLANETS.iter().map(|p| p.2).sum();
    check("moons in all", moons == 288, moons.to_string());

    let row = format!(
        "|{:<8}|{:>7}|{:>6.2}|{:#x}|",
        "Earth",
        6371,
        6371.0 / 2440.0,
        255
    );
    check(
        "formatted row",
        row == "|Earth   |   6371|  2.61|0xff|",
        row.clone(),
    );

    let mut queue: VecDeque<u32> = (1..=5).collect();
    queue.rotate_left(2);
    queue.push_front(0);
    check("deque", queue == [0, 3, 4, 5, 1, 2], format!("{queue:?}"));
    let letters: BTreeSet<char> = TEXT.chars().filter(char::is_ascii_alphabetic).collect();
    check(
        "distinct letters",
        letters.len() == 26,
        letters.len().to_string(),
    );

    if failures.is_empty() {
        println!(
            "collections-std: ok: {} words, {} distinct; {row}",
            TEXT.split_whitespace().count(),
            counts.len()
        );
        ExitCode::SUCCESS
    } else {
        for failure in failures {
            println!("collections-std: FAILED: {failure}");
        }
        ExitCode::from(1)
    }
}

fn word_counts(text: &str) -> HashMap<&str, u32> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// Words grouped by how often they occur, each group sorted.
fn words_by_count<'a>(counts: &HashMap<&'a str, u32>) -> BTreeMap<u32, BTreeSet<&'a str>> {
    let mut groups: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for (word, count) in counts {
        groups.entry(*count).or_default().insert(word);
    }
    groups
}
