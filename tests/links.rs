//! Every link in README.md and docs/*.md resolves: relative links to files of the repository
//! (and their `#anchors` to headings), and — after `cargo doc`, which `.ci/run` runs first —
//! links into this crate's docs.rs pages to pages rustdoc generates.

use std::path::{Path, PathBuf};

const DOCS_RS: &str = "https://docs.rs/diffusion-samplers/latest/";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The markdown files checked.
fn pages() -> Vec<PathBuf> {
    let mut v = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    v.extend(docs);
    v
}

/// Link targets in `text`: inline `[..](target)` / `![..](target)` and reference definitions
/// `[..]: target`, outside code blocks and code spans.
fn targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Drop code spans.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let t = plain.trim_start();
        if t.starts_with('[')
            && let Some(i) = t.find("]: ")
        {
            out.push(t[i + 3..].trim().to_string());
            continue;
        }
        let b = plain.as_bytes();
        let mut i = 0;
        while let Some(j) = plain[i..].find("](") {
            let start = i + j + 2;
            let mut depth = 1;
            let mut k = start;
            while k < b.len() && depth > 0 {
                match b[k] {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    _ => {}
                }
                k += 1;
            }
            out.push(plain[start..k.saturating_sub(1)].trim().to_string());
            i = k;
        }
    }
    out
}

/// GitHub's heading anchors: lower case, spaces to `-`, punctuation dropped.
fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn is_external(t: &str) -> bool {
    t.starts_with("http://") || t.starts_with("https://") || t.starts_with("mailto:")
}

#[test]
fn relative_links_resolve() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for t in targets(&text) {
            if is_external(&t) {
                continue;
            }
            let (file, anchor) = match t.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (t.as_str(), None),
            };
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            assert!(
                path.exists(),
                "{}: link `{t}`: no file {}",
                page.display(),
                path.display()
            );
            if let Some(a) = anchor
                && path.extension().is_some_and(|e| e == "md")
            {
                let target_text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    anchors(&target_text).iter().any(|h| h == a),
                    "{}: link `{t}`: no heading #{a} in {}",
                    page.display(),
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "found only {checked} relative links: is the parser broken?"
    );
}

/// Links into this crate's docs.rs pages point at pages `cargo doc` generates (checked against
/// `target/doc`; run by `.ci/run` after `cargo doc`).
#[test]
#[ignore = "needs `cargo doc --no-deps --all-features` first (.ci/run runs it)"]
fn docs_rs_links_resolve() {
    let doc = root().join("target/doc");
    assert!(
        doc.join("diffusion_samplers/index.html").exists(),
        "run cargo doc first"
    );
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for t in targets(&text).into_iter().filter(|t| t.starts_with(DOCS_RS)) {
            let rel = t[DOCS_RS.len()..].split('#').next().unwrap();
            let path: PathBuf = doc.join(Path::new(rel));
            assert!(
                path.exists(),
                "{}: link {t}: no page {}",
                page.display(),
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "found only {checked} docs.rs links");
}

#[test]
fn the_link_parser_finds_links() {
    let t = targets(
        "see [a](x.md#b) and ![img](docs/p.png), `[not](code)`\n[`Grid`]: https://x\n```\n[no](pe)\n```",
    );
    assert_eq!(t, ["x.md#b", "docs/p.png", "https://x"]);
    assert_eq!(
        anchors("## The one difference in how things fit together"),
        ["the-one-difference-in-how-things-fit-together"]
    );
}
