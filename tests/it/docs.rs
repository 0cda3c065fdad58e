//! The docs are a map that must not lead anywhere wrong: every relative link in README.md,
//! BENCHMARKS.md, benches/*.md and docs/*.md names a file that exists and, with a `#fragment`,
//! a heading of that file (GitHub's anchors); README stays a guide of at most 350 lines.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

const README_MAX_LINES: usize = 350;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    for dir in ["docs", "benches"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("read {dir}/: {e}"))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// GitHub's anchor of a heading: lower case, spaces to hyphens, punctuation dropped; repeats
/// get `-1`, `-2`, ...
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(text) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let mut anchor = base.clone();
                let mut n = 0;
                while !seen.insert(anchor.clone()) {
                    n += 1;
                    anchor = format!("{base}-{n}");
                }
            }
            _ => {}
        }
    }
    seen
}

fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn links(text: &str) -> Vec<String> {
    Parser::new(text)
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                Some(dest_url.to_string())
            }
            _ => None,
        })
        .collect()
}

fn broken_link(from: &Path, link: &str) -> Option<String> {
    if link.contains("://") || link.starts_with("mailto:") {
        return None;
    }
    let (path, fragment) = link.split_once('#').unwrap_or((link, ""));
    let target = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().expect("a file's folder").join(path)
    };
    if !target.exists() {
        return Some(format!("{link}: no file {}", target.display()));
    }
    if fragment.is_empty() || target.extension().is_none_or(|ext| ext != "md") {
        return None;
    }
    let text = std::fs::read_to_string(&target).expect("read the linked file");
    (!anchors(&text).contains(fragment)).then(|| format!("{link}: no heading #{fragment}"))
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = repo();
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("read a markdown file");
        for link in links(&text) {
            if let Some(why) = broken_link(&file, &link) {
                let name = file.strip_prefix(&root).unwrap_or(&file).display();
                broken.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_guide_of_at_most_350_lines() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let lines = readme.lines().count();
    assert!(lines <= README_MAX_LINES, "README.md has {lines} lines");
    let level_one = Parser::new(&readme)
        .filter(|e| {
            matches!(
                e,
                Event::Start(Tag::Heading {
                    level: HeadingLevel::H1,
                    ..
                })
            )
        })
        .count();
    assert_eq!(level_one, 1, "README.md has one title");
}

#[test]
fn anchors_follow_github() {
    let text = "# Google's security events (Cross-Account Protection)\n## `rotate-key` and `/admin/resync`\n## Notes\n## Notes\n";
    let found = anchors(text);
    for expected in [
        "googles-security-events-cross-account-protection",
        "rotate-key-and-adminresync",
        "notes",
        "notes-1",
    ] {
        assert!(found.contains(expected), "{expected} not in {found:?}");
    }
}
