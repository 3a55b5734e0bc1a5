//! No import loop among the server's modules, nor among wsroute-core's (STYLE.md: a file imports
//! only what sits below it).
//!
//! Reads every `src/**/*.rs` of this crate, collects the modules each file names (`use crate::…`,
//! `crate::a::b::` paths in code, `super::` and `self::`, `use` groups, and names a `use` or a
//! `mod child;` brings into scope, so that `use crate::api;` then `api::router::X` names
//! `api::router`), builds the graph with one node per file, and fails on a cycle, printing it
//! with the line behind each edge. Declaring `pub mod child;` is not an import; using an item of
//! the child is. `MODULE_GRAPH_SRC=<dir>` checks another tree's `src/` (e.g. an older commit's);
//! `MODULE_GRAPH_PRINT=1` prints every edge (run with `--nocapture`).
//!
//! What it does not see: names a glob import (`use crate::a::*`) brings in from another file, and
//! macros that expand to paths. Both are rare here; the reader's own tests are below.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

/// Edges left out of the check, each with the reason and what removes it. An edge listed here
/// that no longer exists fails the test, so that the list cannot outlive its reason.
const EXEMPT: &[(&str, &str, &str)] = &[];

#[test]
fn no_import_loop_among_server_modules() {
    let src = std::env::var_os("MODULE_GRAPH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    check_tree(&src, EXEMPT);
}

/// The same for wsroute-core, the crate below the server (it reads the same way).
#[test]
fn no_import_loop_among_core_modules() {
    check_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src"),
        &[],
    );
}

/// Fails on an import loop among the files below `src` (once `exempt` edges are left out).
fn check_tree(src: &Path, exempt: &[(&str, &str, &str)]) {
    let files = read_tree(src);
    assert!(
        files.len() > 5,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut graph = Graph::build(&files);
    assert!(
        graph.edges.len() >= files.len(),
        "{} files but only {} imports between them: the reader is broken",
        files.len(),
        graph.edges.len()
    );
    if std::env::var_os("MODULE_GRAPH_PRINT").is_some() {
        for ((from, to), e) in &graph.edges {
            println!("{from} -> {to}    ({}:{})", e.file, e.line);
        }
    }
    let mut stale = Vec::new();
    for (from, to, why) in exempt {
        if graph
            .edges
            .remove(&(from.to_string(), to.to_string()))
            .is_none()
        {
            stale.push(format!("{from} -> {to} ({why})"));
        }
    }
    assert!(
        stale.is_empty(),
        "exempted imports that no longer exist; remove them from EXEMPT:\n  {}",
        stale.join("\n  ")
    );
    let loops = graph.cycles();
    assert!(
        loops.is_empty(),
        "import loops among the modules of {}:\n\n{}",
        src.display(),
        loops.join("\n\n")
    );
}

/// Every `.rs` file below `src` (but `main.rs`, the binary: its own crate), as (path relative to
/// `src`, text).
fn read_tree(src: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(root)
                    .expect("below the root")
                    .to_string_lossy()
                    .replace('\\', "/");
                if rel != "main.rs" {
                    let text = std::fs::read_to_string(&path)
                        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                    out.push((rel, text));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, &mut out);
    out.sort();
    out
}

/// The module a file defines, as a path from the crate root: `a/b.rs` and `a/b/mod.rs` are
/// `crate::a::b`; `lib.rs` is `crate`.
fn module_of(rel: &str) -> Vec<String> {
    let mut segs: Vec<String> = vec!["crate".into()];
    let stem = rel.trim_end_matches(".rs");
    segs.extend(stem.split('/').map(str::to_owned));
    if matches!(segs.last().map(String::as_str), Some("mod" | "lib")) {
        segs.pop();
    }
    segs
}

fn display(module: &[String]) -> String {
    if module.len() == 1 {
        return "crate".into();
    }
    module[1..].join("::")
}

/// One import: which file and line names the module, and how.
#[derive(Debug, Clone)]
struct Evidence {
    file: String,
    line: usize,
    text: String,
}

struct Graph {
    /// (from, to) module names (without `crate::`), with the first place that imports.
    edges: BTreeMap<(String, String), Evidence>,
}

impl Graph {
    fn build(files: &[(String, String)]) -> Self {
        let modules: BTreeSet<Vec<String>> = files.iter().map(|(rel, _)| module_of(rel)).collect();
        let mut edges = BTreeMap::new();
        for (rel, text) in files {
            let from = module_of(rel);
            let lines: Vec<&str> = text.lines().collect();
            for (target, line, used) in imports(&from, text) {
                // `use crate::api;` names a module without using it: what counts is the path
                // that goes through it later (`api::router::X`).
                if !used && modules.contains(&target) {
                    continue;
                }
                // The longest prefix that is a file's module: `crate::route::registry::X` names
                // `route::registry`; an item of the crate root names nothing.
                let Some(to) = (2..=target.len())
                    .rev()
                    .map(|n| target[..n].to_vec())
                    .find(|p| modules.contains(p))
                else {
                    continue;
                };
                if to == from {
                    continue;
                }
                edges
                    .entry((display(&from), display(&to)))
                    .or_insert_with(|| Evidence {
                        file: rel.clone(),
                        line,
                        text: lines.get(line - 1).map_or("", |l| l.trim()).to_owned(),
                    });
            }
        }
        Self { edges }
    }

    /// Every loop, one per strongly connected group of modules, with the imports behind it.
    fn cycles(&self) -> Vec<String> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in self.edges.keys() {
            next.entry(from).or_default().push(to);
            next.entry(to).or_default();
        }
        let mut out = Vec::new();
        for group in strongly_connected(&next) {
            if group.len() < 2 {
                continue;
            }
            // The shortest loop through the group's first module, inside the group.
            let start = group[0];
            let mut came_from: HashMap<&str, &str> = HashMap::new();
            let mut queue = VecDeque::from([start]);
            'search: while let Some(m) = queue.pop_front() {
                for &n in &next[m] {
                    if !group.contains(&n) {
                        continue;
                    }
                    if n == start {
                        came_from.insert(start, m);
                        break 'search;
                    }
                    if !came_from.contains_key(n) {
                        came_from.insert(n, m);
                        queue.push_back(n);
                    }
                }
            }
            let mut path = vec![start];
            let mut at = came_from[start];
            while at != start {
                path.push(at);
                at = came_from[at];
            }
            path.push(start);
            path.reverse();
            let mut text = format!("{} (all of: {})", path.join(" -> "), group.join(", "));
            for pair in path.windows(2) {
                let e = &self.edges[&(pair[0].to_owned(), pair[1].to_owned())];
                text.push_str(&format!(
                    "\n  {} -> {}: {}:{}: {}",
                    pair[0], pair[1], e.file, e.line, e.text
                ));
            }
            out.push(text);
        }
        out
    }
}

/// Tarjan's algorithm; each group sorted, groups in a stable order.
fn strongly_connected<'a>(next: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, next: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in &next[v] {
            if !s.index.contains_key(w) {
                visit(w, next, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w);
                if w == v {
                    break;
                }
            }
            group.sort();
            s.groups.push(group);
        }
    }
    let mut s = State {
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for &v in next.keys() {
        if !s.index.contains_key(v) {
            visit(v, next, &mut s);
        }
    }
    s.groups.sort();
    s.groups
}

// ---------------------------------------------------------------- reading one file

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// The text with comments and the insides of string and char literals blanked (lines kept).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && is_ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if !prev_ident && (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) && {
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            c.get(j) == Some(&'"')
        } {
            // A raw string: r"..", r#".."#, br"..".
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            out.extend(std::iter::repeat_n(' ', j - i));
            i = j;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    out.push(' ');
                    i += 1;
                }
                out.push(blank(c[i]));
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\''
            && (c.get(i + 1) == Some(&'\\')
                || (c.get(i + 2) == Some(&'\'') && c.get(i + 1) != Some(&'\'')))
        {
            // A char literal ('x', '\n', '\''); a lifetime or label ('a) is left as it is.
            out.push(' ');
            i += 1;
            if c[i] == '\\' {
                out.push(' ');
                i += 1;
            }
            while i < c.len() && c[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Tokens with their line numbers (1-based).
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let mut word: String = c[start..i].iter().collect();
            // A raw identifier: r#name.
            if word == "r"
                && c.get(i) == Some(&'#')
                && c.get(i + 1).is_some_and(|x| x.is_alphabetic())
            {
                i += 1;
                let s = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                word = c[s..i].iter().collect();
            }
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// One name a `use` declares, or a glob.
#[derive(Debug, Clone)]
struct UseItem {
    path: Vec<String>,
    /// The name it brings into scope; `None` for a glob (`*`) or `_`.
    alias: Option<String>,
}

/// Parses one use tree at `toks[*pos..]` under `prefix`.
fn use_tree(toks: &[(Tok, usize)], pos: &mut usize, prefix: Vec<String>, out: &mut Vec<UseItem>) {
    let mut path = prefix;
    loop {
        match toks.get(*pos).map(|t| &t.0) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *pos += 1;
            }
            Some(Tok::Punct('{')) => {
                *pos += 1;
                loop {
                    match toks.get(*pos).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => {
                            *pos += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => *pos += 1,
                        Some(_) => use_tree(toks, pos, path.clone(), out),
                        None => break,
                    }
                }
                return;
            }
            Some(Tok::Punct('*')) => {
                *pos += 1;
                out.push(UseItem { path, alias: None });
                return;
            }
            _ => break,
        }
        if toks.get(*pos).map(|t| &t.0) == Some(&Tok::Sep) {
            *pos += 1;
        } else {
            break;
        }
    }
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    let mut alias = path.last().cloned();
    if let Some(Tok::Ident(kw)) = toks.get(*pos).map(|t| &t.0)
        && kw == "as"
    {
        alias = match toks.get(*pos + 1).map(|t| &t.0) {
            Some(Tok::Ident(a)) if a != "_" => Some(a.clone()),
            _ => None,
        };
        *pos += 2;
    }
    out.push(UseItem { path, alias });
}

/// A path as written, and where: resolved once every `use` of the file is known.
struct Written {
    path: Vec<String>,
    /// The (inline) module it is written in.
    module: Vec<String>,
    line: usize,
}

/// Names in scope per (inline) module of one file.
#[derive(Default)]
struct Scopes {
    names: HashMap<Vec<String>, HashMap<String, Vec<String>>>,
    /// `use x::*` where x is an (inline) module of this same file: its names are in scope too.
    globs: HashMap<Vec<String>, Vec<Vec<String>>>,
}

impl Scopes {
    fn lookup(&self, module: &[String], name: &str, depth: usize) -> Option<Vec<String>> {
        if let Some(p) = self.names.get(module).and_then(|n| n.get(name)) {
            return Some(p.clone());
        }
        if depth > 4 {
            return None;
        }
        self.globs
            .get(module)?
            .iter()
            .find_map(|g| self.lookup(g, name, depth + 1))
    }

    /// The absolute path `segs` names in `module`, if it starts inside this crate.
    fn resolve(&self, module: &[String], segs: &[String]) -> Option<Vec<String>> {
        let (mut base, rest) = match segs.first()?.as_str() {
            "crate" => (vec!["crate".to_owned()], &segs[1..]),
            "self" => (module.to_vec(), &segs[1..]),
            "super" => {
                let mut base = module.to_vec();
                let supers = segs.iter().take_while(|s| *s == "super").count();
                for _ in 0..supers {
                    base.pop();
                }
                if base.is_empty() {
                    return None;
                }
                (base, &segs[supers..])
            }
            name => (self.lookup(module, name, 0)?, &segs[1..]),
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }
}

/// Every absolute path into this crate that the file of module `file_module` names, with its
/// line, and whether it is used there (a path in code) or only brought into scope (a `use`).
fn imports(file_module: &[String], text: &str) -> Vec<(Vec<String>, usize, bool)> {
    let toks = tokens(&strip(text));
    let ident = |i: usize| match toks.get(i).map(|t| &t.0) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let mut scopes = Scopes::default();
    let mut uses: Vec<(UseItem, Vec<String>, usize)> = Vec::new();
    let mut written: Vec<Written> = Vec::new();
    // Inline modules open around the current token: (module path, brace depth inside it).
    let mut inline: Vec<(Vec<String>, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let module = inline
            .last()
            .map_or_else(|| file_module.to_vec(), |(m, _)| m.clone());
        let line = toks[i].1;
        match &toks[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(w) if w == "mod" && ident(i + 1).is_some() => {
                let name = ident(i + 1).unwrap_or_default().to_owned();
                let mut child = module.clone();
                child.push(name.clone());
                scopes
                    .names
                    .entry(module.clone())
                    .or_default()
                    .insert(name, child.clone());
                if toks.get(i + 2).map(|t| &t.0) == Some(&Tok::Punct('{')) {
                    depth += 1;
                    inline.push((child, depth));
                    i += 3;
                } else {
                    i += 2;
                }
            }
            Tok::Ident(w) if w == "use" => {
                i += 1;
                let mut items = Vec::new();
                if toks.get(i).map(|t| &t.0) == Some(&Tok::Sep) {
                    i += 1;
                }
                use_tree(&toks, &mut i, Vec::new(), &mut items);
                while i < toks.len() && toks[i].0 != Tok::Punct(';') {
                    i += 1;
                }
                for item in items {
                    uses.push((item, module.clone(), line));
                }
            }
            Tok::Ident(first)
                if toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Sep)
                    && !matches!(
                        i.checked_sub(1).and_then(|p| toks.get(p)).map(|t| &t.0),
                        Some(Tok::Sep | Tok::Punct('.'))
                    ) =>
            {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j).map(|t| &t.0) == Some(&Tok::Sep) {
                    match ident(j + 1) {
                        Some(s) => {
                            path.push(s.to_owned());
                            j += 2;
                        }
                        None => break,
                    }
                }
                written.push(Written { path, module, line });
                i = j;
            }
            _ => i += 1,
        }
    }

    // `use` declarations may name each other in any order: resolve until nothing changes.
    let mut out = Vec::new();
    let mut pending = uses;
    loop {
        let before = pending.len();
        let mut left = Vec::new();
        for (item, module, line) in pending {
            match scopes.resolve(&module, &item.path) {
                Some(target) => {
                    match &item.alias {
                        Some(alias) => {
                            scopes
                                .names
                                .entry(module.clone())
                                .or_default()
                                .insert(alias.clone(), target.clone());
                        }
                        None if target.starts_with(file_module) => {
                            scopes
                                .globs
                                .entry(module.clone())
                                .or_default()
                                .push(target.clone());
                        }
                        None => {}
                    }
                    // A glob brings the module's items in: it counts as using the module.
                    out.push((target, line, item.alias.is_none()));
                }
                None => left.push((item, module, line)),
            }
        }
        if left.len() == before {
            break;
        }
        pending = left;
    }
    for w in written {
        if let Some(target) = scopes.resolve(&w.module, &w.path) {
            out.push((target, w.line, true));
        }
    }
    out
}

// ---------------------------------------------------------------- the reader's own tests

fn graph_of(files: &[(&str, &str)]) -> Graph {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect();
    Graph::build(&files)
}

fn edges(g: &Graph) -> Vec<String> {
    g.edges.keys().map(|(a, b)| format!("{a} -> {b}")).collect()
}

#[test]
fn reads_every_way_a_file_names_a_module() {
    let g = graph_of(&[
        (
            "lib.rs",
            "pub mod api; pub mod a; pub mod b; pub mod c; pub mod d; pub mod e;",
        ),
        ("api/mod.rs", "pub mod router; pub mod push;"),
        ("api/router.rs", "pub struct X;"),
        ("api/push.rs", "use super::router::X;"),
        // A bare module import names nothing by itself; the path through it names the module.
        (
            "a.rs",
            "use crate::api;\nfn f() { let _ = api::router::X; }",
        ),
        // Groups, nested, with self and renames.
        (
            "b.rs",
            "use crate::{c::Z, d::{self as dd, Y}};\nuse crate::e as ee;\nfn f() { ee::g(); }",
        ),
        // A path in code, and one inside a generic.
        (
            "c.rs",
            "pub struct Z;\nfn f() -> Vec<crate::d::Y> { crate::e::g() }",
        ),
        ("d.rs", "pub struct Y;"),
        ("e.rs", "pub fn g() {}"),
    ]);
    assert_eq!(
        edges(&g),
        [
            "a -> api::router",
            "api::push -> api::router",
            "b -> c",
            "b -> d",
            "b -> e",
            "c -> d",
            "c -> e",
        ]
    );
    assert!(g.cycles().is_empty());
}

#[test]
fn a_parent_declaring_its_child_is_not_an_import_but_using_it_is() {
    let g = graph_of(&[
        ("lib.rs", "pub mod ws;"),
        (
            "ws/mod.rs",
            "pub mod session;\npub mod frame;\nfn f() { session::run(); }",
        ),
        (
            "ws/session.rs",
            "use super::frame;\npub fn run() { frame::hello(); }",
        ),
        ("ws/frame.rs", "pub fn hello() {}"),
    ]);
    assert_eq!(edges(&g), ["ws -> ws::session", "ws::session -> ws::frame"]);
    // The child using its parent closes a loop.
    let g = graph_of(&[
        ("lib.rs", "pub mod ws;"),
        (
            "ws/mod.rs",
            "pub mod session;\npub fn json() {}\nfn f() { session::run(); }",
        ),
        ("ws/session.rs", "pub fn run() { super::json(); }"),
    ]);
    let loops = g.cycles();
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert!(
        loops[0].starts_with("ws -> ws::session -> ws"),
        "{}",
        loops[0]
    );
    assert!(loops[0].contains("ws/session.rs:1"), "{}", loops[0]);
}

#[test]
fn comments_strings_tests_and_other_crates_name_nothing() {
    let g = graph_of(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        (
            "a.rs",
            r##"//! See [`crate::b::X`].
/* crate::b::X /* nested */ crate::b::X */
use wsroute_proto::v1 as pb;
use std::collections::HashMap;
fn f<'a>(s: &'a str) -> char {
    let _ = "crate::b::X \" crate::b::X";
    let _ = r#"crate::b::X "quoted" "#;
    let _ = tracing::info!("x");
    let _ = pb::Envelope::default();
    let _ = HashMap::<u8, u8>::new();
    '"'
}
#[cfg(test)]
mod tests {
    use super::*;
    fn g() { super::f("x"); self::h(); }
    fn h() {}
}
"##,
        ),
        ("b.rs", "pub struct X; fn f() { crate::a::f(\"\"); }"),
    ]);
    assert_eq!(edges(&g), ["b -> a"]);
}

#[test]
fn a_loop_of_three_is_found_and_printed() {
    let g = graph_of(&[
        ("lib.rs", "pub mod node; pub mod state; pub mod api;"),
        (
            "node.rs",
            "use crate::api::push;\npub struct NodeState;\nfn f() { push::go(); }",
        ),
        ("api/mod.rs", "pub mod push;"),
        ("api/push.rs", "use crate::state::Shared;\npub fn go() {}"),
        ("state.rs", "pub struct Shared(crate::node::NodeState);"),
    ]);
    let loops = g.cycles();
    assert_eq!(loops.len(), 1);
    assert!(
        loops[0].starts_with("api::push -> state -> node -> api::push"),
        "{}",
        loops[0]
    );
}
