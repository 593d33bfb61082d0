//! ham.toml(5), generated from the README's "Configuration reference" (its tables become
//! `.TP` entries, its paragraphs `.PP`, its code blocks `.nf`), so that the man page and the
//! reference are one text. Test-only: the page is kept in `docs/man/` and checked for drift.

use std::fmt::Write;

/// The README's section from `## Configuration reference` to the next `## `.
fn section(readme: &str) -> &str {
    let start = readme
        .find("\n## Configuration reference\n")
        .expect("the README has a configuration reference");
    let body = &readme[start + 1..];
    let body = &body[body.find('\n').map_or(body.len(), |i| i + 1)..];
    let end = body.find("\n## ").map_or(body.len(), |i| i + 1);
    &body[..end]
}

/// One line of markdown as roff text: `code` in bold, links as their text, escapes.
fn inline(md: &str) -> String {
    let mut out = String::new();
    let mut rest = md.replace("\\|", "|").replace("\\`", "\u{1}");
    // [text](target) → text
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](").map(|m| open + m) else {
            break;
        };
        let Some(close) = rest[mid..].find(')').map(|c| mid + c) else {
            break;
        };
        rest = format!(
            "{}{}{}",
            &rest[..open],
            &rest[open + 1..mid],
            &rest[close + 1..]
        );
    }
    let mut code = false;
    for part in rest.split('`') {
        let text = part
            .replace('\\', "\\e")
            .replace('-', "\\-")
            .replace("**", "")
            .replace('\u{1}', "`");
        if code {
            let _ = write!(out, "\\fB{text}\\fR");
        } else {
            out.push_str(&text);
        }
        code = !code;
    }
    out
}

/// A roff line that must not start a request.
fn line(text: &str) -> String {
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text.to_owned()
    }
}

/// The cells of a table row `| a | b | c |`.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut code = false;
    let mut prev = ' ';
    for c in inner.chars() {
        match c {
            '`' => {
                code = !code;
                cur.push(c);
            }
            '|' if !code && prev != '\\' => cells.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
        prev = c;
    }
    cells.push(cur);
    cells.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// The whole man page.
pub fn man_page(readme: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        ".TH HAM.TOML 5 \"\" \"ham {}\" \"File Formats\"",
        env!("CARGO_PKG_VERSION")
    );
    s.push_str(".SH NAME\nham.toml \\- the configuration file of ham(8)\n");
    s.push_str(".SH SYNOPSIS\n/etc/ham/ham.toml\n");
    s.push_str(".SH DESCRIPTION\n");
    let mut para = Vec::new();
    let mut in_code = false;
    let mut header: Option<Vec<String>> = None;
    let flush = |s: &mut String, para: &mut Vec<String>| {
        if !para.is_empty() {
            let _ = writeln!(s, ".PP\n{}", line(&inline(&para.join(" "))));
            para.clear();
        }
    };
    for l in section(readme).lines() {
        if in_code {
            if l.starts_with("```") {
                s.push_str(".fi\n.RE\n");
                in_code = false;
            } else {
                let _ = writeln!(s, "{}", line(&l.replace('\\', "\\e").replace('-', "\\-")));
            }
            continue;
        }
        if l.starts_with("```") {
            flush(&mut s, &mut para);
            s.push_str(".RS\n.nf\n");
            in_code = true;
        } else if let Some(h) = l.strip_prefix("### ") {
            flush(&mut s, &mut para);
            header = None;
            let _ = writeln!(s, ".SS {}", line(&inline(h)));
        } else if l.starts_with('|') {
            flush(&mut s, &mut para);
            let c = cells(l);
            if c.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) {
                continue; // the separator row
            }
            match &header {
                None => header = Some(c),
                Some(h) => {
                    let _ = writeln!(s, ".TP\n{}", line(&inline(&c[0])));
                    let mut body = Vec::new();
                    for (k, cell) in c.iter().enumerate().skip(1) {
                        let name = h.get(k).map(String::as_str).unwrap_or("");
                        if name == "default" && cell.starts_with('(') {
                            body.push(cell.clone());
                        } else if name == "default" {
                            body.push(format!("(default: {cell})"));
                        } else {
                            body.push(cell.clone());
                        }
                    }
                    // The meaning first, then the default.
                    body.rotate_left(usize::from(h.get(1).is_some_and(|n| n == "default")));
                    let _ = writeln!(s, "{}", line(&inline(&body.join(" "))));
                }
            }
        } else if l.trim().is_empty() {
            flush(&mut s, &mut para);
            header = None;
        } else if let Some(item) = l.strip_prefix("- ") {
            flush(&mut s, &mut para);
            let _ = writeln!(s, ".IP \\(bu 2\n{}", line(&inline(item)));
        } else {
            para.push(l.trim().to_owned());
        }
    }
    flush(&mut s, &mut para);
    s.push_str(".SH SEE ALSO\n.BR ham (8),\n.BR hamctl (8),\n.BR ham\\-client (1)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_become_tagged_paragraphs_with_their_default() {
        let md = "intro\n## Configuration reference\nText `a-b`.\n\n### `[x]`\n| key | default | meaning |\n|---|---|---|\n| `k` | `1` | what \\| it `x|y` does |\n\n## Next\n";
        let m = man_page(md);
        assert!(m.contains(".SS \\fB[x]\\fR"), "{m}");
        assert!(
            m.contains(".TP\n\\fBk\\fR\nwhat | it \\fBx|y\\fR does (default: \\fB1\\fR)"),
            "{m}"
        );
        assert!(m.contains("Text \\fBa\\-b\\fR."), "{m}");
        assert!(!m.contains("Next"), "{m}");
    }
}
