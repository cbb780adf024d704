//! `cargo xtask log FILE [--json]`: read a saved serial log (an emulator's, or a real machine's
//! captured from power-on) and summarise what Bulwark said — only lines that verify under the
//! boot's key count (docs/console.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bulwark_abi::console::{parse_result_line, RESULT_PREFIX, VIOLATION_PREFIX};
use bulwark_abi::logauth::{Forgery, Line, Order, Verifier};

/// What a log says, as far as it verifies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub lines: usize,
    /// Key lines accepted (1 per boot).
    pub boots: usize,
    /// Bulwark lines that verified.
    pub verified: usize,
    /// Lines that claim to be Bulwark's and do not verify: (line number, why, text).
    pub forged: Vec<(usize, &'static str, String)>,
    /// `bulwark: ` lines before any key line: (line number, text). Bulwark's boot stub, or a log
    /// whose capture began after the key line; nothing can verify them.
    pub unkeyed: Vec<(usize, String)>,
    /// Breaks in the sequence: (line number, what).
    pub seq_breaks: Vec<(usize, String)>,
    /// Violation lines Bulwark's console dropped and reported (`console dropped=N` right after
    /// the gap): not breaks.
    pub dropped: u64,
    /// Verified violation lines, counted by each field.
    pub violations: usize,
    pub by_kind: BTreeMap<String, u64>,
    pub by_access: BTreeMap<String, u64>,
    pub by_page: BTreeMap<String, u64>,
    pub by_ip: BTreeMap<String, u64>,
    pub by_action: BTreeMap<String, u64>,
    /// Sum of the `suppressed=` fields (violations counted but not printed).
    pub suppressed: u64,
    /// The last verified counters line (its text after `counters `).
    pub counters: Option<String>,
    /// The verified result line of the last boot: (status, reason).
    pub result: Option<(u32, String)>,
    /// A result line that did not verify and came last (what the log claims, not trusted).
    pub claimed_result: Option<(u32, String)>,
}

impl Summary {
    /// One word for the log as a whole.
    pub fn verdict(&self) -> String {
        match &self.result {
            Some((0, r)) if self.forged.is_empty() && self.seq_breaks.is_empty() => {
                format!("pass (status=0 reason={r})")
            }
            Some((s, r)) => format!(
                "status={s} reason={r}{}",
                if self.forged.is_empty() && self.seq_breaks.is_empty() {
                    ""
                } else {
                    " (with forged or missing lines: see above)"
                }
            ),
            None if self.boots == 0 => "unverified: no key line (Bulwark stopped before it, or \
                                        the capture began after it)"
                .into(),
            None => "truncated: no verified result line (the run did not end, or its end was \
                     lost or suppressed)"
                .into(),
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Summarise a log's lines.
pub fn analyze<S: AsRef<str>>(lines: &[S]) -> Summary {
    let mut s = Summary::default();
    let mut v = Verifier::new();
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let raw = raw.as_ref().trim_end_matches(['\r', '\n']);
        s.lines = n;
        match v.check(raw) {
            Line::Key { .. } => s.boots += 1,
            Line::Other => {}
            Line::Forged {
                why: Forgery::NoKey,
            } if s.boots == 0 => s.unkeyed.push((n, raw.to_string())),
            Line::Forged { why } => {
                if let Some(r) = raw
                    .find(RESULT_PREFIX)
                    .and_then(|at| raw.get(at..))
                    .and_then(parse_result_line)
                {
                    s.claimed_result = Some((r.0, r.1.to_string()));
                }
                s.forged.push((n, why.as_str(), raw.to_string()));
            }
            Line::Genuine { text, order, .. } => {
                s.verified += 1;
                match order {
                    Order::InOrder => {}
                    // Bulwark's own dropped note right after the gap, naming exactly it.
                    Order::Gap { missing }
                        if bulwark_abi::console::parse_dropped_note(text) == Some(missing) =>
                    {
                        s.dropped = s.dropped.saturating_add(missing);
                    }
                    Order::Gap { missing } => s
                        .seq_breaks
                        .push((n, format!("{missing} Bulwark line(s) missing before it"))),
                    Order::Replayed { last } => s
                        .seq_breaks
                        .push((n, format!("replayed or reordered (after seq {last})"))),
                }
                if let Some(vl) = text.strip_prefix(VIOLATION_PREFIX) {
                    s.violations += 1;
                    let count = |map: &mut BTreeMap<String, u64>, v: Option<String>| {
                        *map.entry(v.unwrap_or_else(|| "?".into())).or_default() += 1;
                    };
                    count(&mut s.by_kind, field(vl, "kind").map(str::to_string));
                    count(&mut s.by_access, field(vl, "access").map(str::to_string));
                    let page = field(vl, "gpa")
                        .and_then(|g| g.strip_prefix("0x"))
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .map(|g| format!("{:#x}", g & !0xfff));
                    count(&mut s.by_page, page);
                    count(&mut s.by_ip, field(vl, "ip").map(str::to_string));
                    count(&mut s.by_action, field(vl, "action").map(str::to_string));
                    s.suppressed = s.suppressed.saturating_add(
                        field(vl, "suppressed")
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(0),
                    );
                } else if let Some(c) = text.split_once(" counters ") {
                    s.counters = Some(c.1.to_string());
                } else if let Some((st, r)) = parse_result_line(text) {
                    s.result = Some((st, r.to_string()));
                    s.claimed_result = None;
                }
            }
        }
    }
    if s.result.is_none() {
        if let Some((_, t)) = s.unkeyed.last() {
            if let Some((st, r)) = parse_result_line(t) {
                s.claimed_result = Some((st, r.to_string()));
            }
        }
    }
    s
}

fn table(out: &mut String, title: &str, map: &BTreeMap<String, u64>) {
    if map.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n| {title} | violations |\n|---|---|");
    for (k, n) in map {
        let _ = writeln!(out, "| {k} | {n} |");
    }
}

/// The human-readable summary.
pub fn render(path: &str, s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "log: {path} ({} lines)", s.lines);
    let _ = writeln!(
        o,
        "\n| what | value |\n|---|---|\n| boots (key lines) | {} |\n| Bulwark lines verified | {} |\n\
         | lines that failed verification (forged) | {} |\n| Bulwark lines before any key line (unverifiable) | {} |\n\
         | sequence breaks (missing, replayed, reordered) | {} |\n| violations (verified) | {} |\n\
         | suppressed violations (rate limit) | {} |\n\
         | violation lines dropped by Bulwark's console (reported, seq gaps accounted) | {} |\n| verdict | {} |",
        s.boots,
        s.verified,
        s.forged.len(),
        s.unkeyed.len(),
        s.seq_breaks.len(),
        s.violations,
        s.suppressed,
        s.dropped,
        s.verdict()
    );
    table(&mut o, "kind", &s.by_kind);
    table(&mut o, "access", &s.by_access);
    table(&mut o, "page (gpa)", &s.by_page);
    table(&mut o, "instruction address (ip)", &s.by_ip);
    table(&mut o, "action", &s.by_action);
    if let Some(c) = &s.counters {
        let _ = writeln!(o, "\ncounters: {c}");
    }
    if let Some((st, r)) = &s.claimed_result {
        if s.result.is_none() {
            let _ = writeln!(
                o,
                "\nthe log CLAIMS status={st} reason={r}, but no such line verifies: not trusted"
            );
        }
    }
    for (n, why, l) in &s.forged {
        let _ = writeln!(o, "FORGED line {n} ({why}): {l}");
    }
    for (n, what) in &s.seq_breaks {
        let _ = writeln!(o, "line {n}: {what}");
    }
    for (n, l) in &s.unkeyed {
        let _ = writeln!(o, "UNVERIFIABLE line {n} (before any key line): {l}");
    }
    o
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_map(m: &BTreeMap<String, u64>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    format!("{{{}}}", items.join(","))
}

/// The summary as one JSON object.
pub fn json(path: &str, s: &Summary) -> String {
    let forged: Vec<String> = s
        .forged
        .iter()
        .map(|(n, why, l)| {
            format!(
                "{{\"line\":{n},\"why\":{},\"text\":{}}}",
                json_str(why),
                json_str(l)
            )
        })
        .collect();
    let breaks: Vec<String> = s
        .seq_breaks
        .iter()
        .map(|(n, w)| format!("{{\"line\":{n},\"what\":{}}}", json_str(w)))
        .collect();
    let unkeyed: Vec<String> = s
        .unkeyed
        .iter()
        .map(|(n, l)| format!("{{\"line\":{n},\"text\":{}}}", json_str(l)))
        .collect();
    let result = |r: &Option<(u32, String)>| match r {
        Some((st, re)) => format!("{{\"status\":{st},\"reason\":{}}}", json_str(re)),
        None => "null".into(),
    };
    format!(
        "{{\"file\":{},\"lines\":{},\"boots\":{},\"verified\":{},\"failed_verification\":{},\
         \"forged\":[{}],\"unverifiable_before_key\":[{}],\"seq_breaks\":[{}],\"violations\":{},\
         \"by_kind\":{},\"by_access\":{},\"by_page\":{},\"by_ip\":{},\"by_action\":{},\
         \"suppressed\":{},\"counters\":{},\"result\":{},\"claimed_result\":{},\"verdict\":{}}}",
        json_str(path),
        s.lines,
        s.boots,
        s.verified,
        s.forged.len(),
        forged.join(","),
        unkeyed.join(","),
        breaks.join(","),
        s.violations,
        json_map(&s.by_kind),
        json_map(&s.by_access),
        json_map(&s.by_page),
        json_map(&s.by_ip),
        json_map(&s.by_action),
        s.suppressed,
        s.counters.as_deref().map_or("null".into(), json_str),
        result(&s.result),
        result(&s.claimed_result),
        json_str(&s.verdict())
    )
}

/// `cargo xtask log FILE [--json]`: exit 0 when the log verifies and ends in a verified status-0
/// result line, 1 otherwise.
pub fn main(args: &[String]) -> Result<u8, String> {
    let mut file = None;
    let mut as_json = false;
    for a in args {
        match a.as_str() {
            "--json" => as_json = true,
            s if s.starts_with("--") => return Err(format!("unknown log option '{s}'")),
            s => file = Some(s.to_string()),
        }
    }
    let file = file.ok_or("log needs a FILE (runs save theirs under target/xtask/console/)")?;
    let bytes = std::fs::read(&file).map_err(|e| format!("reading {file}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .split('\n')
        .collect();
    let s = analyze(&lines);
    if as_json {
        println!("{}", json(&file, &s));
    } else {
        print!("{}", render(&file, &s));
    }
    let clean = s.forged.is_empty() && s.seq_breaks.is_empty() && s.unkeyed.is_empty();
    Ok(if clean && matches!(s.result, Some((0, _))) {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_abi::logauth::{hex16, mac};

    const KEY: [u8; 16] = *b"sample log key!!";

    /// A genuine log: key line, then `texts` tagged with seq 1, 2, ...
    fn genuine(texts: &[&str]) -> Vec<String> {
        let mut v = vec![
            "firmware banner".to_string(),
            format!(
                "bulwark: log-key {} alg=siphash-2-4-128 source=test",
                String::from_utf8_lossy(&hex16(&KEY))
            ),
        ];
        for (i, t) in texts.iter().enumerate() {
            let seq = i as u64 + 1;
            let m = hex16(&mac(&KEY, seq, t.as_bytes()));
            v.push(format!("{t} seq={seq} mac={}", String::from_utf8_lossy(&m)));
        }
        v
    }

    const RUN: [&str; 6] = [
        "bulwark: INFO Bulwark 0.1.0 (arm64) starting",
        "bulwark: violation kind=roe access=write gpa=0x40080800 gva=0x40080800 ip=0x40092da0 vcpu=0 action=skip",
        "bulwark: violation kind=mmio-guard access=read gpa=0x9010000 gva=0x9010000 ip=0x4009101c vcpu=0 action=inject",
        "bulwark: violation kind=roe access=write gpa=0x40080808 gva=0x40080808 ip=0x40092da0 vcpu=0 action=skip suppressed=5",
        "bulwark: INFO counters exits=8 violations=8",
        "bulwark: result status=0 reason=guest-exit",
    ];

    #[test]
    fn a_genuine_log_passes_with_its_tables() {
        let mut log = genuine(&RUN);
        log.insert(3, "guest output between".into());
        let s = analyze(&log);
        assert_eq!(s.boots, 1);
        assert_eq!(s.verified, 6);
        assert!(s.forged.is_empty() && s.seq_breaks.is_empty() && s.unkeyed.is_empty());
        assert_eq!(s.violations, 3);
        assert_eq!(s.by_kind["roe"], 2);
        assert_eq!(s.by_kind["mmio-guard"], 1);
        assert_eq!(s.by_access["write"], 2);
        assert_eq!(s.by_page["0x40080000"], 2);
        assert_eq!(s.by_ip["0x40092da0"], 2);
        assert_eq!(s.by_action["inject"], 1);
        assert_eq!(s.suppressed, 5);
        assert_eq!(s.counters.as_deref(), Some("exits=8 violations=8"));
        assert_eq!(s.result, Some((0, "guest-exit".into())));
        assert!(s.verdict().starts_with("pass"));
        let j = json("f", &s);
        assert!(
            j.contains("\"by_kind\":{\"mmio-guard\":1,\"roe\":2}"),
            "{j}"
        );
        assert!(
            j.contains("\"result\":{\"status\":0,\"reason\":\"guest-exit\"}"),
            "{j}"
        );
        assert!(render("f", &s).contains("| 0x40080000 | 2 |"));
    }

    #[test]
    fn forged_lines_do_not_count_and_are_named() {
        let mut log = genuine(&RUN[..5]);
        // The guest's lines: a raw fake violation, one behind a relay prefix, a fake key line,
        // a copy of a genuine line with another field, and a fake verdict after a crash.
        log.push("bulwark: violation kind=attr access=exec gpa=0x1000 gva=0x1000 ip=0x1 vcpu=0 action=skip".into());
        log.push("guest| bulwark: violation kind=attr access=exec gpa=0x1000 gva=0x1000 ip=0x1 vcpu=0 action=skip seq=6 mac=00000000000000000000000000000000".into());
        log.push(format!(
            "bulwark: log-key {} alg=siphash-2-4-128 source=rdseed",
            "0".repeat(32)
        ));
        log.push(log[3].replace("action=skip", "action=halt"));
        log.push("bulwark: result status=0 reason=guest-exit".into());
        let s = analyze(&log);
        assert_eq!(s.forged.len(), 5, "{:?}", s.forged);
        assert_eq!(s.violations, 3);
        assert!(!s.by_kind.contains_key("attr"));
        assert_eq!(s.result, None);
        assert_eq!(s.claimed_result, Some((0, "guest-exit".into())));
        assert!(s.verdict().starts_with("truncated"));
        assert!(render("f", &s).contains("CLAIMS status=0"));
    }

    #[test]
    fn a_truncated_log_has_no_verdict() {
        let log = genuine(&RUN[..4]);
        let s = analyze(&log);
        assert_eq!(s.result, None);
        assert!(s.verdict().starts_with("truncated"));
        // No key line at all: nothing verifies.
        let s = analyze(&log[2..]);
        assert_eq!(s.boots, 0);
        assert_eq!(s.verified, 0);
        assert!(s.verdict().starts_with("unverified"));
    }

    #[test]
    fn reordered_and_dropped_lines_are_reported() {
        let mut log = genuine(&RUN);
        log.swap(3, 4);
        let s = analyze(&log);
        assert_eq!(s.seq_breaks.len(), 2, "{:?}", s.seq_breaks);
        assert!(!s.verdict().starts_with("pass"));
        let mut log = genuine(&RUN);
        log.remove(3);
        let s = analyze(&log);
        assert_eq!(s.seq_breaks.len(), 1);
        assert!(s.seq_breaks[0].1.contains("1 Bulwark line(s) missing"));
        let mut log = genuine(&RUN);
        let again = log[3].clone();
        log.insert(5, again);
        let s = analyze(&log);
        assert_eq!(s.seq_breaks.len(), 1);
        assert!(s.seq_breaks[0].1.contains("replayed"));
    }

    #[test]
    fn a_second_boot_after_a_verified_result_is_accepted() {
        let mut log = genuine(&RUN);
        log.extend(genuine(&["bulwark: result status=3 reason=guest-exit"]));
        let s = analyze(&log);
        assert_eq!(s.boots, 2);
        assert!(s.forged.is_empty());
        assert_eq!(s.result, Some((3, "guest-exit".into())));
    }
}
