//! `check TARGET FILE...`: runs a fuzz target's check on saved inputs
//! without libFuzzer, e.g. a crash from `fuzz/artifacts/`, in an ordinary
//! debug build (overflow checks on, as in the fuzz build) that a debugger
//! can run. For `conn_state` it prints the decoded conversation first, the
//! form a regression test writes it in.

use std::process::ExitCode;

use teardown_fuzz_harness::{captures, conversation, decap, frame};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, files)) = args.split_first() else {
        eprintln!("usage: check parse_frame|capture_reader|conn_state|decapsulate FILE...");
        return ExitCode::FAILURE;
    };
    let check: fn(&[u8]) = match target.as_str() {
        "parse_frame" => frame::check,
        "capture_reader" => captures::check,
        "conn_state" => conversation::check,
        "decapsulate" => decap::check,
        other => {
            eprintln!("check: no target {other}");
            return ExitCode::FAILURE;
        }
    };
    for file in files {
        let input = match std::fs::read(file) {
            Ok(input) => input,
            Err(err) => {
                eprintln!("check: {file}: {err}");
                return ExitCode::FAILURE;
            }
        };
        if target == "conn_state"
            && let Some((header, steps)) = conversation::decode(&input)
        {
            println!("{file}: {header:?}, {:?}", header.timeouts());
            for step in steps {
                println!("  {step:?}");
            }
        }
        check(&input);
        println!("{file}: passes");
    }
    ExitCode::SUCCESS
}
