//! The crate's modules form a ladder, not a loop: every `crate::` path (and every `super::`
//! that climbs to the crate root) in `src/` names a top-level module in a layer below its
//! own, as `src/lib.rs`'s Layout lists the layers. A new module must be placed there; an
//! import up or sideways fails here, naming the edge and the file, and so does any loop
//! between top-level modules.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The layers of `src/lib.rs`'s Layout, top first: `N. ...` items, each naming its modules as
/// intra-doc links (`` [`name`] ``), continuation lines included.
fn layers(lib_rs: &str) -> BTreeMap<String, usize> {
    let mut layer_of = BTreeMap::new();
    let mut current = None;
    let mut in_layout = false;
    for line in lib_rs.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim();
        if doc.starts_with('#') {
            in_layout = doc == "# Layout";
            current = None;
            continue;
        }
        if !in_layout {
            continue;
        }
        if doc.is_empty() {
            current = None;
            continue;
        }
        if let Some((number, _)) = doc.split_once(". ")
            && let Ok(number) = number.parse::<usize>()
        {
            current = Some(number);
        }
        let Some(layer) = current else { continue };
        let mut rest = doc;
        while let Some(start) = rest.find("[`") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("`]") else { break };
            layer_of.insert(after[..end].to_string(), layer);
            rest = &after[end + 2..];
        }
    }
    layer_of
}

/// `source` with comments removed and every string and char literal emptied.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"..." or r#"..."#, with as many hashes.
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or else a lifetime, which stays.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_at(code: &str) -> &str {
    let end = code
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(code.len());
    &code[..end]
}

/// The first segment of every path in a `{ ... }` group that starts `code`.
fn group_heads(code: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = 1;
    for (i, c) in code.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                heads.push(ident_at(code[item_start..].trim_start()));
                item_start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    heads
}

/// The top-level modules that the code of a file in module `path` names.
fn imports(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut add = |name: &str| {
        if !name.is_empty() && name != "self" && name != "super" {
            found.insert(name.to_string());
        }
    };
    let bytes = code.as_bytes();
    let starts_path = |at: usize| {
        at == 0
            || !(bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b':')
    };
    for (at, _) in code.match_indices("crate::") {
        if !starts_path(at) {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if rest.starts_with('{') {
            group_heads(rest).into_iter().for_each(&mut add);
        } else {
            add(ident_at(rest));
        }
    }
    for (at, _) in code.match_indices("super::") {
        if !starts_path(at) {
            continue;
        }
        let mut rest = &code[at..];
        let mut climbs = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = after;
        }
        if climbs >= path.len() {
            if rest.starts_with('{') {
                group_heads(rest).into_iter().for_each(&mut add);
            } else {
                add(ident_at(rest));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// A loop among `edges`, as the modules along it, if there is one.
fn find_loop(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn every_import_goes_down_the_layout_and_nothing_loops() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib_rs = fs::read_to_string(src.join("lib.rs")).unwrap();
    let layer_of = layers(&lib_rs);
    assert!(
        layer_of.len() > 10,
        "the Layout lists the layers: {layer_of:?}"
    );
    let mut problems = Vec::new();
    for line in code_only(&lib_rs).lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ")
            && let Some(name) = name.strip_suffix(';')
            && !layer_of.contains_key(name)
        {
            problems.push(format!("module {name} is not in src/lib.rs's Layout"));
        }
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let mut path: Vec<String> = relative
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|p| p == "mod") {
            path.pop();
        }
        // The crate root and the binary are above every layer.
        if path == ["lib"] || path == ["main"] {
            continue;
        }
        let top = path[0].clone();
        let code = code_only(&fs::read_to_string(file).unwrap());
        for imported in imports(&code, &path) {
            if imported == top || !layer_of.contains_key(&imported) {
                continue;
            }
            edges
                .entry(top.clone())
                .or_default()
                .insert(imported.clone());
            let (from, to) = (layer_of.get(&top), layer_of[&imported]);
            if from.is_some_and(|&from| from >= to) {
                problems.push(format!(
                    "{top} (layer {}) -> {imported} (layer {to}), in src/{}",
                    from.unwrap(),
                    relative.display()
                ));
            }
        }
    }
    if let Some(cycle) = find_loop(&edges) {
        problems.push(format!("an import loop: {}", cycle.join(" -> ")));
    }
    assert!(
        edges.get("http").is_some_and(|e| e.contains("node")),
        "the parse finds imports: {edges:?}"
    );
    assert!(
        problems.is_empty(),
        "imports must go down src/lib.rs's Layout:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_parse_reads_groups_climbs_and_skips_comments_and_strings() {
    let code = code_only(
        "use crate::{a::B, b, c::{d, e}};\n// crate::x\nlet s = \"crate::y\";\n\
         let r = r#\"crate::z\"#; let c = '\"'; fn f<'a>() { super::super::g::h() }",
    );
    let found = imports(&code, &["m".to_string(), "n".to_string()]);
    let found: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(found, ["a", "b", "c", "g"]);
}
