//! Guards the module layering: every `crate::` and `super::` path in `src/` (and in
//! bench-compare's `src/`) names only modules that the table in DESIGN.md §1 (bench-compare's
//! README) lets its module import, and the table itself only points down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A layering table: module → the modules it may import (`None`: everything), in the
/// table's order, top first.
type Table = Vec<(String, Option<BTreeSet<String>>)>;

/// Reads the `| module | ... | may import |` table that follows `marker` in `doc`.
fn read_table(doc: &str, marker: &str) -> Table {
    let start = doc.find(marker).unwrap_or_else(|| panic!("no {marker:?} in the document"));
    let mut rows = Vec::new();
    for line in doc[start..].lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let (first, last) = (cells[0], cells[cells.len() - 1]);
        let Some(module) = first.strip_prefix('`').and_then(|m| m.strip_suffix('`')) else {
            continue; // the header and the rule under it
        };
        let allowed = match last {
            "everything" => None,
            "—" => Some(BTreeSet::new()),
            list => Some(list.split(',').map(|m| m.trim().to_string()).collect()),
        };
        rows.push((module.to_string(), allowed));
    }
    assert!(rows.len() > 3, "the table after {marker:?} has {} rows", rows.len());
    rows
}

/// Every module of the crate whose sources are in `src`, by path under it without `.rs`
/// (`store/mod.rs` is `store/mod`; `main.rs` and `lib.rs` are `main` and `lib`).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).expect("under src").with_extension("");
                let text = std::fs::read_to_string(&path).expect("read source");
                out.insert(rel.to_string_lossy().into_owned(), text);
            }
        }
    }
    out
}

/// The modules `module` (whose source is `text`) imports: the first segment of each path
/// after `crate::` (a top-level module; `store` means `store/mod`, and an item re-exported
/// at the root, `crate::Store`, means `lib`) and after `super::` (the parent's: a sibling
/// in the same directory, or for a `mod.rs` or a top-level file the crate root; outside
/// unit-test modules, where `super` is the module itself), each item of a `{..}` group
/// counted, and each child declared with `mod` by a `mod.rs`, `lib.rs` or `main.rs`.
/// Comments are skipped.
fn imports(module: &str, text: &str) -> BTreeSet<String> {
    let dir = module.rsplit_once('/').map(|(dir, _)| dir);
    let is_root = module.ends_with("mod") || module == "lib" || module == "main";
    let top = |name: &str| match name {
        "" => None,
        n if n.starts_with(char::is_uppercase) => Some("lib".to_string()),
        "store" => Some("store/mod".to_string()),
        n => Some(n.to_string()),
    };
    let code: String =
        text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let tests_at = code.find("mod tests").unwrap_or(code.len());
    let mut out = BTreeSet::new();
    for line in code.lines().map(str::trim) {
        if is_root
            && let Some(name) = line.strip_prefix("mod ").or_else(|| line.strip_prefix("pub mod "))
            && let Some(name) = name.strip_suffix(';')
        {
            out.insert(match dir {
                Some(dir) => format!("{dir}/{name}"), // `mod x;` in `store/mod.rs`
                None => name.to_string(),
            });
        }
    }
    for (prefix, from_parent) in [("crate::", false), ("super::", true)] {
        for (at, _) in code.match_indices(prefix) {
            if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // `foo_crate::`, not ours
            }
            if from_parent && at > tests_at {
                continue; // `use super::*` in a unit-test module: the module itself
            }
            for name in first_segments(&code[at + prefix.len()..]) {
                let to = match (from_parent, dir) {
                    (true, Some(dir)) if !is_root => match top(&name).as_deref() {
                        Some("lib") => Some(format!("{dir}/mod")), // `super::Store`
                        Some(_) => Some(format!("{dir}/{name}")),
                        None => None,
                    },
                    _ => top(&name),
                };
                out.extend(to);
            }
        }
    }
    out.remove(module);
    out
}

/// The first segment of the path (or of each path of the `{..}` group) at the start of
/// `rest`, which follows a `crate::` or `super::`.
fn first_segments(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    let Some(group) = rest.strip_prefix('{') else { return vec![ident(rest)] };
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// Checks the sources under `src` against `table`; returns every breach found.
fn breaches(src: &Path, table: &Table) -> Vec<String> {
    let mut found = Vec::new();
    let order: BTreeMap<&str, usize> =
        table.iter().enumerate().map(|(i, (m, _))| (m.as_str(), i)).collect();
    // The table only points down.
    for (i, (module, allowed)) in table.iter().enumerate() {
        for to in allowed.iter().flatten() {
            match order.get(to.as_str()) {
                Some(&j) if j > i => {}
                Some(_) => found.push(format!("table: {module} may import {to}, listed above it")),
                None => found.push(format!("table: {module} may import {to}, not in the table")),
            }
        }
    }
    let sources = modules(src);
    for name in sources.keys() {
        if !order.contains_key(name.as_str()) {
            found.push(format!("{name}.rs is not in the table"));
        }
    }
    for (module, _) in table {
        if !sources.contains_key(module) {
            found.push(format!("the table names {module}, which has no source file"));
        }
    }
    for (module, allowed) in table {
        let (Some(text), Some(allowed)) = (sources.get(module), allowed) else { continue };
        for to in imports(module, text) {
            if !allowed.contains(&to) {
                found.push(format!("{module} imports {to}, which its row does not allow"));
            }
        }
    }
    found
}

#[test]
fn the_library_keeps_the_layering_of_design_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("DESIGN.md")).expect("DESIGN.md");
    let table = read_table(&design, "Modules, from the top layer down.");
    let found = breaches(&root.join("src"), &table);
    assert!(found.is_empty(), "layering breaches:\n{}", found.join("\n"));
}

#[test]
fn bench_compare_keeps_the_layering_of_its_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-compare");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("bench-compare README");
    let table = read_table(&readme, "**Layers.**");
    let found = breaches(&root.join("src"), &table);
    assert!(found.is_empty(), "layering breaches:\n{}", found.join("\n"));
}

/// The checker itself finds what it must: an upward import, one through the crate root, a
/// circle in the table, a module missing from it.
#[test]
fn the_checker_finds_upward_imports_and_circles() {
    let text = "use crate::store::Writer;\nuse crate::{Error, Store};\n// crate::live\n\
                use crate::{\n    apply::Change,\n    index::{self, Table},\n};\n\
                use super::{shared::State, Store};\n\
                fn f() { super::write::g(); }\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
    let got = imports("store/view", text);
    let want = ["apply", "index", "lib", "store/mod", "store/shared", "store/write"];
    assert_eq!(got, BTreeSet::from(want.map(String::from)));
    // In a `mod.rs`, `super` is the crate root.
    let got = imports("store/mod", "use super::format::Kind;\nuse super::Error;\n");
    assert_eq!(got, BTreeSet::from(["format", "lib"].map(String::from)));
    let root = imports("store/mod", "mod shared;\npub use view::Reader;\nmod view;\n");
    assert_eq!(root, BTreeSet::from(["store/shared", "store/view"].map(String::from)));

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.rs"), "use crate::b::X;\n").expect("write");
    std::fs::write(dir.path().join("b.rs"), "use crate::a::Y;\n").expect("write");
    std::fs::write(dir.path().join("c.rs"), "\n").expect("write");
    let doc = "Mods.\n\n| module | may import |\n|---|---|\n| `a` | b |\n| `b` | — |\n\
               | `x` | y |\n| `y` | x |\n";
    let found = breaches(dir.path(), &read_table(doc, "Mods."));
    for want in [
        "table: y may import x, listed above it",
        "b imports a, which its row does not allow",
        "c.rs is not in the table",
        "the table names x, which has no source file",
    ] {
        assert!(found.iter().any(|f| f == want), "{want:?} not in {found:?}");
    }
}
