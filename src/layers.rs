//! The crate's layers, checked: every top-level module sits in one layer, and imports only from its own layer or
//! the layers below it (`crate::` paths in code that is not a test). A module that reaches up, or a module in no
//! layer, fails `cargo test` with the file and line of the import, so the layout README.md draws stays true. This
//! is the project's own copy of `module-cycles`: a crate whose imports only point down has no cycle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top to bottom. A module may import from its own layer only when no cycle results (checked too).
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["daemon"],
    &["status", "status_page", "validate"],
    &["report"],
    &["run"],
    &["history"],
    &["plan"],
    &["set_engine", "events"],
    &["state", "warehouse", "launchdarkly"],
    &["pg", "keys", "progress", "shutdown", "dbt"],
    &["config"],
    &["schedule", "vocab"],
];

/// One `crate::<module>` path: who names whom, and where.
struct Import {
    from: String,
    to: String,
    at: String,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`None` for `main.rs` and `lib.rs`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    (!matches!(name, "main" | "lib")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that is not a comment and not its test module.
fn code_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut after_cfg_test = false;
    for line in text.lines() {
        let code = line.trim_start();
        if after_cfg_test && code.contains("mod ") {
            break;
        }
        after_cfg_test = code.starts_with("#[cfg(test)]");
        lines.push(if code.starts_with("//") {
            ""
        } else {
            line.split(" // ").next().unwrap_or("")
        });
    }
    lines
}

/// The modules a line names as `crate::a`, or as `a` inside `use crate::{a, b::{c, d}}`. A group may span lines:
/// `depth` carries how deep in its braces the line starts (0: outside any group).
fn named_modules(line: &str, depth: &mut usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    if *depth == 0 {
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(inner) = rest.strip_prefix('{') {
                *depth = 1;
                rest = inner;
                break;
            }
            names.push(identifier(rest));
        }
        if *depth == 0 {
            rest = "";
        }
    }
    for part in rest.split_inclusive([',', '{', '}']) {
        if *depth == 1 {
            names.push(identifier(part.trim_start()));
        }
        *depth += part.matches('{').count();
        *depth = depth.saturating_sub(part.matches('}').count());
        if *depth == 0 {
            break;
        }
    }
    names.retain(|name| !name.is_empty() && name != "self" && name != "super");
    names
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn imports(src: &Path) -> Vec<Import> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        // This file's own examples are strings, not imports.
        let Some(from) = top_module(src, &file).filter(|m| m != "layers") else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let mut depth = 0;
        for (number, line) in code_lines(&text).into_iter().enumerate() {
            for to in named_modules(line, &mut depth) {
                if to != from {
                    let at = format!("{}:{}", file.display(), number + 1);
                    found.push(Import {
                        from: from.clone(),
                        to,
                        at,
                    });
                }
            }
        }
    }
    found
}

/// Modules of one layer that import each other in a cycle, if any.
fn cycle_within_layers(imports: &[Import]) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for import in imports
        .iter()
        .filter(|i| layer_of(&i.from) == layer_of(&i.to))
    {
        graph.entry(&import.from).or_default().push(&import.to);
    }
    fn reaches<'a>(
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        from: &'a str,
        goal: &str,
        seen: &mut Vec<&'a str>,
    ) -> bool {
        for &next in graph.get(from).into_iter().flatten() {
            if next == goal {
                return true;
            }
            if !seen.contains(&next) {
                seen.push(next);
                if reaches(graph, next, goal, seen) {
                    return true;
                }
            }
        }
        false
    }
    graph.keys().find_map(|&module| {
        let mut seen = Vec::new();
        reaches(&graph, module, module, &mut seen).then(|| {
            let mut cycle: Vec<String> = seen.iter().map(ToString::to_string).collect();
            cycle.insert(0, module.to_string());
            cycle
        })
    })
}

#[test]
fn every_module_imports_only_from_its_layer_or_below() {
    // Where `cargo test` runs the test from, read when it runs: a test binary built in another clone sharing the
    // target directory (as `.ci/env.sh` arranges) would otherwise read that clone's `src/` (as tests/util does).
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let src = root.join("src");
    let imports = imports(&src);
    let mut problems = Vec::new();
    for import in &imports {
        for module in [&import.from, &import.to] {
            if layer_of(module).is_none() {
                problems.push(format!(
                    "{module} is in no layer of src/layers.rs ({})",
                    import.at
                ));
            }
        }
        if let (Some(from), Some(to)) = (layer_of(&import.from), layer_of(&import.to))
            && to < from
        {
            problems.push(format!(
                "{} imports {} from a layer above it: {}",
                import.from, import.to, import.at
            ));
        }
    }
    if let Some(cycle) = cycle_within_layers(&imports) {
        problems.push(format!("a cycle within one layer: {}", cycle.join(" -> ")));
    }
    problems.dedup();
    assert!(
        problems.is_empty(),
        "the layers are broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn imports_are_read_from_paths_and_groups_but_not_comments() {
    let mut depth = 0;
    assert_eq!(
        named_modules("use crate::plan::{Action, Drift};", &mut depth),
        ["plan"]
    );
    let group = "use crate::{config::Mode, state::{Store, StateError}, vocab};";
    assert_eq!(
        named_modules(group, &mut depth),
        ["config", "state", "vocab"]
    );
    assert_eq!(depth, 0);
    for (line, names) in [
        ("use crate::{", vec![]),
        ("    run::Runner, warehouse::{", vec!["run", "warehouse"]),
        ("        read_rows, Warehouse,", vec![]),
        ("    },", vec![]),
        ("    vocab,", vec!["vocab"]),
        ("};", vec![]),
    ] {
        assert_eq!(named_modules(line, &mut depth), names, "{line}");
    }
    assert_eq!(depth, 0);
    let text = "//! see [`crate::cli`]\nuse crate::vocab::Action;\n#[cfg(test)]\nmod tests {\nuse crate::cli;\n}";
    assert_eq!(
        code_lines(text),
        ["", "use crate::vocab::Action;", "#[cfg(test)]"]
    );
}
