//! docs/ARCHITECTURE.md names only what exists: every path in backticks (`dir/`, `a/b.rs`),
//! every `file.rs: function` hop (the file defines that function), and every file of its
//! module tree.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("registry-node sits in the workspace")
        .to_path_buf()
}

/// Whether `source` defines a function `name` (free, method or trait item).
fn defines_fn(source: &str, name: &str) -> bool {
    let needle = format!("fn {name}");
    source.match_indices(&needle).any(|(i, _)| {
        let after = source[i + needle.len()..].chars().next();
        let before = source[..i].chars().next_back();
        matches!(after, Some('(' | '<')) && !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// What the document claims, checked against the tree under `root`; one line per problem.
fn problems(doc: &str, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let check_path = |line: usize, path: &str, function: Option<&str>, out: &mut Vec<String>| {
        let full = root.join(path);
        if !full.exists() {
            out.push(format!("line {line}: `{path}` does not exist"));
            return;
        }
        if let Some(f) = function {
            let source = std::fs::read_to_string(&full).unwrap_or_default();
            if !defines_fn(&source, f) {
                out.push(format!("line {line}: `{path}` defines no function `{f}`"));
            }
        }
    };
    let mut in_code = false;
    // The module tree: (indent level, directory) of the enclosing entries.
    let mut tree: Vec<(usize, String)> = Vec::new();
    for (i, text) in doc.lines().enumerate() {
        let line = i + 1;
        if text.starts_with("```") {
            in_code = !in_code;
            tree.clear();
            continue;
        }
        if in_code {
            tree_line(text, &mut tree, |p| check_path(line, p, None, &mut out));
            continue;
        }
        for (k, span) in text.split('`').enumerate() {
            if k % 2 == 0 {
                continue;
            }
            let (path, function) = match span.split_once(": ") {
                Some((p, f)) => (p, Some(f)),
                None => (span, None),
            };
            let looks_like_path = path.contains('/')
                && !path.starts_with('/')
                && !path.contains(' ')
                && (path.ends_with('/')
                    || path.rsplit('/').next().is_some_and(|f| f.contains('.')));
            if looks_like_path {
                check_path(line, path, function, &mut out);
            }
        }
    }
    out
}

/// One line of a `├── name  name  description` tree under a `root/` line.
fn tree_line(text: &str, tree: &mut Vec<(usize, String)>, mut check: impl FnMut(&str)) {
    let Some(pos) = text.find("── ") else {
        let root = text.trim();
        if root.ends_with('/') && !root.contains(' ') {
            tree.clear();
            tree.push((0, root.to_owned()));
            check(root);
        }
        return;
    };
    let depth = text[..pos].chars().count() / 4 + 1;
    while tree.last().is_some_and(|(d, _)| *d >= depth) {
        tree.pop();
    }
    let Some((_, parent)) = tree.last().cloned() else {
        return;
    };
    for name in text[pos + "── ".len()..].split_whitespace() {
        let is_file = name.ends_with(".rs") || name.ends_with('/');
        if !is_file {
            break;
        }
        let path = format!("{parent}{name}");
        check(&path);
        if name.ends_with('/') {
            tree.push((depth, path));
        }
    }
}

#[test]
fn every_path_and_function_in_architecture_md_exists() {
    let root = repo_root();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md is there");
    let problems = problems(&doc, &root);
    assert!(
        problems.is_empty(),
        "docs/ARCHITECTURE.md is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_missing_paths_functions_and_tree_entries() {
    let root = repo_root();
    let doc = "\
- `registry-node/src/lib.rs`
- `registry-node/src/roles.rs: start`
- `registry-node/src/no_such_file.rs`
- `registry-node/src/roles.rs: no_such_function`
- `registry-node/src/roles.rs: star`
```
registry-node/src/
├── http/
│   ├── api.rs          routes
│   └── gone.rs         a file that is not there
└── roles.rs  nothing.rs
```
";
    let found = problems(doc, &root);
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(found[0].contains("no_such_file.rs"));
    assert!(found[1].contains("no_such_function"));
    assert!(
        found[2].contains("`star`"),
        "a prefix of a name is not the name"
    );
    assert!(found[3].contains("registry-node/src/http/gone.rs"));
    assert!(found[4].contains("registry-node/src/nothing.rs"));
}
