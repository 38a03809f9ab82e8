//! The crate's layering, checked on the source: every `crate::…` path in `src/` is an edge from
//! the file's folder to the folder it names, and
//!
//! - no edge runs from a lower layer to a higher one ([`LAYERS`], bottom first);
//! - the folders form no cycle (within `ops/`, each op family is a folder of its own);
//! - code above the ops never asks which device a tensor lives on: outside `runtime/`,
//!   `tensor/`, `ops/` and the folders that own a kernel (a `.cu` file beside their code), no
//!   file calls `is_cuda`, `on_cuda` or `cuda_buffer`, names `Device::Cuda` or `Storage`,
//!   reaches into an op family's `cuda`/`launch` modules or `ops::gpu`, or into
//!   `runtime::cuda` other than its profiler.
//!
//! A failure names the file and line of each offending path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, bottom first: a folder may import its own layer's and lower layers' folders only.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["runtime", "rng"],
    &["tensor"],
    &["ops"],
    &["autodiff"],
    &["nn", "data", "bounds"],
    &["io", "vnnlib", "attack", "compress"],
    &["train", "verify"],
    &["eval"],
    &["bin"],
];

/// Names the crate root re-exports, by the folder that defines them.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("Tensor", "tensor"),
    ("Device", "tensor"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The folder (graph node) a source path belongs to: its top folder under `src/`, or for
/// `ops/<family>/…` the family (and `ops/gpu.rs`, the families' shared device plumbing, a node
/// of its own); files at the root are nodes of their own (`error.rs`, `rng.rs`).
fn node_of(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let top = parts[0].trim_end_matches(".rs").to_string();
    if top == "ops" && parts.len() > 1 && parts[1] != "mod.rs" {
        return format!("ops/{}", parts[1].trim_end_matches(".rs"));
    }
    top
}

/// The node a `crate::a::b…` path names (`a`, or `ops/b` when `b` is an op family).
fn node_of_path(segments: &[&str], families: &BTreeSet<String>) -> Option<String> {
    let first = *segments.first()?;
    if let Some((_, node)) = ROOT_REEXPORTS.iter().find(|(name, _)| *name == first) {
        return Some(node.to_string());
    }
    if first == "ops" {
        if let Some(fam) = segments
            .get(1)
            .filter(|f| families.contains(**f) || **f == "gpu")
        {
            return Some(format!("ops/{fam}"));
        }
    }
    Some(first.to_string())
}

/// The layer of a node (`ops/<family>` is in the `ops` layer).
fn layer_of(node: &str) -> Option<usize> {
    let top = node.split('/').next().unwrap();
    LAYERS.iter().position(|layer| layer.contains(&top))
}

/// Text with comments and string literals blanked (same length, same lines), so that a path
/// in a doc comment or a message is not an edge.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i] == b'"' {
            out.push(b'"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    out.push(b' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                    i += 1;
                }
            }
            out.push(b'"');
            i += 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A character literal such as '"'.
            out.extend_from_slice(b"' '");
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Every path below `crate::` in `code`, with its line: `crate::a::b` and each leaf of a
/// grouped `use crate::{a::b, c::{d, e}}`.
fn crate_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(at) = code[start..].find("crate::") {
        let pos = start + at;
        start = pos + "crate::".len();
        // `$crate::` in macros and identifiers ending in "crate" are not crate paths.
        if pos > 0 {
            let prev = code.as_bytes()[pos - 1];
            if prev == b'$' || prev.is_ascii_alphanumeric() || prev == b'_' {
                continue;
            }
        }
        let line = code[..pos].matches('\n').count() + 1;
        let rest = &code[start..];
        if rest.starts_with('{') {
            let group = &rest[..matching_brace(rest) + 1];
            found.extend(expand_group("", group).into_iter().map(|p| (line, p)));
        } else {
            found.push((line, split_path(rest)));
        }
    }
    found.retain(|(_, p)| !p.is_empty());
    found
}

/// The index of the `}` closing the `{` that `s` starts with.
fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, ch) in s.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len() - 1
}

/// The full paths of a use group `{a::b, c::{d, e}}` under `prefix`.
fn expand_group(prefix: &str, group: &str) -> Vec<Vec<String>> {
    let inner = &group[1..group.len() - 1];
    let mut items = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[from..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        let full = format!("{prefix}{item}");
        match full.find('{') {
            Some(at) => out.extend(expand_group(&full[..at], &full[at..])),
            None => out.push(split_path(&full)),
        }
    }
    out
}

fn split_path(s: &str) -> Vec<String> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    s[..end]
        .split("::")
        .filter(|p| !p.is_empty() && *p != "self")
        .map(str::to_string)
        .collect()
}

struct Source {
    rel: PathBuf,
    node: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "lib.rs")
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_path_buf();
            let text = std::fs::read_to_string(&p).unwrap();
            Source {
                node: node_of(&rel),
                code: code_only(&text),
                rel,
            }
        })
        .collect()
}

fn op_families() -> BTreeSet<String> {
    std::fs::read_dir(src().join("ops"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Edges between distinct nodes, each with where it was seen.
fn edges() -> BTreeMap<(String, String), Vec<String>> {
    let families = op_families();
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in sources() {
        for (line, path) in crate_paths(&s.code) {
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            let Some(to) = node_of_path(&segs, &families) else {
                continue;
            };
            if to != s.node {
                edges.entry((s.node.clone(), to)).or_default().push(format!(
                    "{}:{line} crate::{}",
                    s.rel.display(),
                    path.join("::")
                ));
            }
        }
    }
    edges
}

#[test]
fn the_source_parser_sees_grouped_and_inline_paths() {
    let code = code_only(
        "use crate::{error::Error, ops::{conv::x, gpu}};\n\
         // crate::comment::ignored\n\
         let a = crate::tensor::Tensor::zeros(&[1]); let s = \"crate::string::ignored\";\n\
         macro_rules! m { () => { $crate::runtime::x() } }",
    );
    let paths: Vec<String> = crate_paths(&code)
        .into_iter()
        .map(|(line, p)| format!("{line}:{}", p.join("::")))
        .collect();
    assert_eq!(
        paths,
        [
            "1:error::Error",
            "1:ops::conv::x",
            "1:ops::gpu",
            "3:tensor::Tensor::zeros"
        ]
    );
    let families: BTreeSet<String> = ["conv".to_string()].into();
    assert_eq!(
        node_of_path(&["ops", "conv", "x"], &families).as_deref(),
        Some("ops/conv")
    );
    assert_eq!(
        node_of_path(&["ops", "gpu"], &families).as_deref(),
        Some("ops/gpu")
    );
    assert_eq!(
        node_of_path(&["ops", "Conv2dParams"], &families).as_deref(),
        Some("ops")
    );
    assert_eq!(
        node_of_path(&["Tensor"], &families).as_deref(),
        Some("tensor")
    );
    assert_eq!(node_of(Path::new("ops/conv/cuda.rs")), "ops/conv");
    assert_eq!(node_of(Path::new("ops/gpu.rs")), "ops/gpu");
    assert_eq!(node_of(Path::new("ops/mod.rs")), "ops");
    assert_eq!(node_of(Path::new("train/optim/mod.rs")), "train");
}

#[test]
fn every_folder_has_a_layer() {
    let missing: BTreeSet<String> = sources()
        .iter()
        .map(|s| s.node.clone())
        .filter(|n| layer_of(n).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "folders without a layer in tests/layering.rs: {missing:?}"
    );
}

#[test]
fn nothing_imports_upward() {
    let mut upward = Vec::new();
    for ((from, to), seen) in edges() {
        let (Some(lf), Some(lt)) = (layer_of(&from), layer_of(&to)) else {
            continue;
        };
        if lt > lf {
            upward.push(format!("{from} -> {to}: {}", seen.join(", ")));
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a lower layer to a higher one:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_cycle_across_folders() {
    let edges = edges();
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
    }
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        for &m in graph.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                0 => visit(m, graph, state, stack, cycles),
                1 => {
                    let at = stack.iter().position(|&s| s == m).unwrap();
                    let mut cycle: Vec<&str> = stack[at..].to_vec();
                    cycle.push(m);
                    cycles.push(cycle.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    let nodes: Vec<&str> = graph.keys().copied().collect();
    for n in nodes {
        if state.get(n).copied().unwrap_or(0) == 0 {
            visit(n, &graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    let detail: Vec<String> = cycles
        .iter()
        .map(|c| {
            let hops: Vec<&str> = c.split(" -> ").collect();
            let seen: Vec<String> = hops
                .windows(2)
                .map(|w| edges[&(w[0].to_string(), w[1].to_string())][0].clone())
                .collect();
            format!("{c}\n    {}", seen.join("\n    "))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles across folders:\n{}",
        detail.join("\n")
    );
}

/// Folders (relative to `src/`) holding a kernel file: they own device code.
fn kernel_folders() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "cu") {
                out.insert(
                    p.parent()
                        .unwrap()
                        .strip_prefix(root)
                        .unwrap()
                        .to_path_buf(),
                );
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&src(), &src(), &mut out);
    out
}

#[test]
fn code_above_the_ops_never_asks_for_the_device() {
    let owners = kernel_folders();
    assert!(
        owners.iter().any(|f| f.starts_with("ops")),
        "no kernel files found beside the ops"
    );
    let mut asks = Vec::new();
    for s in sources() {
        let top = s.node.split('/').next().unwrap();
        let folder = s.rel.parent().unwrap();
        if ["runtime", "tensor", "ops"].contains(&top) || owners.contains(folder) {
            continue;
        }
        for (n, line) in s.code.lines().enumerate() {
            let device_path = line.contains("runtime::cuda") && !line.contains("cuda::profile");
            // An op family's device paths (`ops::<family>::cuda`, `…::launch`) and the GPU
            // plumbing are the ops' own business.
            let op_internals = line.contains("ops::gpu")
                || line
                    .split("ops::")
                    .skip(1)
                    .any(|rest| rest.contains("::cuda") || rest.contains("::launch"));
            let asks_device = line.contains(".is_cuda()")
                || line.contains("on_cuda(")
                || line.contains("cuda_buffer(")
                || line.contains("Device::Cuda")
                || line.contains("Storage::")
                || device_path
                || op_internals;
            if asks_device {
                asks.push(format!("{}:{}: {}", s.rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        asks.is_empty(),
        "device branching above the ops (move it into an op or a kernel-owning folder):\n{}",
        asks.join("\n")
    );
}

#[test]
fn kernels_live_beside_their_code() {
    // Every kernel module sits in a folder with Rust code that launches it.
    for folder in kernel_folders() {
        let dir = src().join(&folder);
        let has_rust = std::fs::read_dir(&dir)
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "rs"));
        assert!(
            has_rust,
            "{} holds kernels but no Rust code",
            folder.display()
        );
    }
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("kernels")
            .exists(),
        "kernels/ is gone: kernel files live beside their op"
    );
}

#[test]
fn no_file_cites_a_document_outside_the_repository() {
    // The design notes are docs/design.md; the needle is split so this file does not match.
    let needles = [["DESIGN", ".md"].concat(), ["..", "/shared/"].concat()];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = ["src", "tests", "benches", "scripts", "tools", "docs"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    stack.push(root.join("README.md"));
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            for (n, line) in text.lines().enumerate() {
                if needles.iter().any(|k| line.contains(k.as_str())) {
                    found.push(format!(
                        "{}:{}",
                        p.strip_prefix(root).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "cites a document outside the repository: {found:?}"
    );
}
