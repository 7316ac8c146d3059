//! The README and the book (docs/) hold to the code: every link resolves,
//! every `memwatch` and `cargo xtask` command shown is one the CLI accepts,
//! every route is documented, and the metric reference is the one the code
//! defines (`MEMWATCH_BLESS=1 cargo test --test docs` rewrites it).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use clap::Parser;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
}

/// README.md and every page of the book.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    files_under(&repo().join("docs/src"), "md", &mut pages);
    pages
}

/// The text outside fenced code blocks and inline code.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let mut inline = false;
            for part in line.split('`') {
                if !inline {
                    out.push_str(part);
                }
                inline = !inline;
            }
        }
        out.push('\n');
    }
    out
}

/// The commands in fenced code blocks: every line of `sh` blocks, the
/// `$ ` lines of `console` ones (the rest is their output).
fn code_commands(text: &str) -> Vec<&str> {
    let mut block: Option<&str> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            block = if block.is_some() { None } else { Some(lang.trim()) };
            continue;
        }
        match block {
            Some("sh" | "bash" | "shell") => out.push(t),
            Some("console") => out.extend(t.strip_prefix("$ ")),
            _ => {}
        }
    }
    out
}

/// A heading's anchor as GitHub and mdBook make it.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    prose_headings(&text).iter().map(|h| slug(h)).collect()
}

fn prose_headings(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(line.trim_start_matches('#').replace('`', ""));
        }
    }
    out
}

/// `[label](target)` and `![alt](target)` targets.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find(')').unwrap_or(after.len());
        out.push(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_link_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in links(&prose(&text)) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
            } else if !anchor.is_empty() && !anchors(&file).iter().any(|a| a == anchor) {
                broken.push(format!("{}: {target}: no such heading", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// A shell line split into words (quotes kept whole), up to a comment,
/// pipe, redirection or `&`.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, '#' | '|' | '>' | '&' | ';') if !started || word.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// The commands a code line runs: `$ ` prompts and `sudo` and variable
/// assignments taken off.
fn command(line: &str) -> Option<Vec<String>> {
    let line = line.trim_start();
    let line = line.strip_prefix("$ ").unwrap_or(line);
    let mut w = words(line);
    while w
        .first()
        .is_some_and(|x| x == "sudo" || x == "-E" || x.contains('=') && !x.starts_with('-'))
    {
        w.remove(0);
    }
    let first = w.first()?;
    (first == "memwatch" || first == "cargo" && w.get(1).is_some_and(|x| x == "xtask")).then_some(w)
}

/// `cargo xtask` tasks, from xtask's own enum.
fn xtask_tasks() -> Vec<String> {
    let main = std::fs::read_to_string(repo().join("xtask/src/main.rs")).unwrap();
    let body = &main[main.find("enum Task {").unwrap()..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| {
            let name = l.strip_prefix("    ")?;
            let name: String = name.chars().take_while(|c| c.is_alphanumeric()).collect();
            name.starts_with(|c: char| c.is_ascii_uppercase())
                .then(|| name.to_lowercase())
        })
        .collect()
}

#[test]
fn every_command_shown_is_one_the_cli_accepts() {
    let tasks = xtask_tasks();
    assert!(
        tasks.contains(&"dist".to_string()) && tasks.contains(&"docs".to_string()),
        "{tasks:?}"
    );
    let mut wrong = Vec::new();
    let mut seen = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for line in code_commands(&text) {
            let Some(w) = command(line) else { continue };
            seen += 1;
            let ok: Result<(), String> = if w[0] == "memwatch" {
                match memwatch::cli::Cli::try_parse_from(&w) {
                    Ok(_) => Ok(()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            clap::error::ErrorKind::DisplayVersion | clap::error::ErrorKind::DisplayHelp
                        ) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            } else if w.get(2).is_some_and(|t| tasks.contains(t)) {
                Ok(())
            } else {
                Err(format!("no xtask {:?}", w.get(2)))
            };
            if let Err(e) = ok {
                wrong.push(format!(
                    "{}: {line}\n  {}",
                    page.display(),
                    e.lines().next().unwrap_or("")
                ));
            }
        }
    }
    assert!(seen > 20, "only {seen} commands found: is the parser right?");
    assert!(wrong.is_empty(), "commands the CLI refuses:\n{}", wrong.join("\n"));
}

#[test]
fn every_route_is_documented() {
    let http = std::fs::read_to_string(repo().join("memwatch/src/http/mod.rs")).unwrap();
    let api = std::fs::read_to_string(repo().join("docs/src/reference/http-api.md")).unwrap();
    let routes: Vec<&str> = http
        .split(".route(\"")
        .skip(1)
        .map(|r| &r[..r.find('"').unwrap()])
        .collect();
    assert!(routes.len() >= 15, "{routes:?}");
    let missing: Vec<&&str> = routes
        .iter()
        .filter(|r| {
            !api.contains(&format!("`{r}`"))
                && !api.contains(&format!("`GET {r}`"))
                && !api.contains(&format!(" {r}`"))
                && !api.contains(&format!("{r}?"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "routes not in docs/src/reference/http-api.md: {missing:?}"
    );
}

/// Every metric the code defines, with its help text: the literal pairs
/// passed where each is registered.
fn defined_metrics() -> BTreeMap<String, String> {
    let mut sources = Vec::new();
    files_under(&repo().join("memwatch/src"), "rs", &mut sources);
    let mut out = BTreeMap::new();
    for file in sources {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"memwatch_") {
            let after = &rest[i + 1..];
            let name_end = after.find('"').unwrap();
            let name = &after[..name_end];
            rest = &after[name_end + 1..];
            let Some(help) = rest.trim_start().strip_prefix(',').map(str::trim_start) else {
                continue;
            };
            let Some(help) = help.strip_prefix('"') else { continue };
            // A Rust string: escapes, and `\` before a newline joining lines.
            let mut text = String::new();
            let mut chars = help.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\n') => {
                            let skipped: String = chars.clone().take_while(|c| c.is_whitespace()).collect();
                            for _ in 0..skipped.chars().count() {
                                chars.next();
                            }
                        }
                        Some(e) => text.push(e),
                        None => {}
                    },
                    c => text.push(c),
                }
            }
            if name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !name.ends_with('_')
            {
                out.insert(name.to_string(), text);
            }
        }
    }
    out
}

#[test]
fn the_metric_reference_is_the_codes() {
    let metrics = defined_metrics();
    assert!(metrics.len() >= 60, "{} metrics found", metrics.len());
    let mut generated = String::from(
        "# Every metric, from the code\n\n\
         Generated from where each metric is registered (the test `the_metric_reference_is_the_codes` fails \
         when this page and the code differ; `MEMWATCH_BLESS=1 cargo test -p memwatch --test docs` rewrites it). \
         Labels and their bounds: [Metrics](metrics.md).\n\n| metric | help |\n|---|---|\n",
    );
    for (name, help) in &metrics {
        generated.push_str(&format!("| `{name}` | {} |\n", help.replace('|', "\\|")));
    }
    let path = repo().join("docs/src/reference/metric-help.md");
    if std::env::var_os("MEMWATCH_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let page = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        page == generated,
        "{} is not the code's: run MEMWATCH_BLESS=1 cargo test -p memwatch --test docs",
        path.display()
    );
    // The hand-written table (labels, meaning) names each metric, and only
    // metrics that exist.
    let table = std::fs::read_to_string(repo().join("docs/src/reference/metrics.md")).unwrap();
    let mut named = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split(" | ").next().unwrap();
        let mut prev = String::new();
        for token in first.split('`').skip(1).step_by(2) {
            // `live_table_entries` / `_capacity`: a sibling, or `unwind_rows` /
            // `_capacity`: an extension.
            let full = if let Some(suffix) = token.strip_prefix('_') {
                let stem = prev.rsplit_once('_').map_or(prev.as_str(), |(s, _)| s);
                let sibling = format!("{stem}_{suffix}");
                let extension = format!("{prev}_{suffix}");
                match metrics.contains_key(&format!("memwatch_{sibling}")) {
                    true => sibling,
                    false => extension,
                }
            } else {
                token.to_string()
            };
            named.push(format!("memwatch_{full}"));
            prev = full;
        }
    }
    let stale: Vec<&String> = named.iter().filter(|n| !metrics.contains_key(*n)).collect();
    assert!(
        stale.is_empty(),
        "docs/src/reference/metrics.md names metrics the code lacks: {stale:?}"
    );
    let undocumented: Vec<&String> = metrics.keys().filter(|m| !named.contains(m)).collect();
    assert!(
        undocumented.is_empty(),
        "metrics missing from docs/src/reference/metrics.md: {undocumented:?}"
    );
}
