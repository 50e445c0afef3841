//! The documentation's examples, run: every fenced block of `README.md`,
//! `docs/protocol.md`, `docs/client.md` and `docs/operations.md` is
//! checked, or listed with the reason it cannot run here.
//!
//! **The convention.** The line just above each fence is an HTML comment
//! (invisible on GitHub) saying what the block is:
//!
//! | marker | the block | checked by |
//! |---|---|---|
//! | `<!-- example: run -->` | shell commands that end | `sh -c` against one shared `herald dev`; each command must exit 0; a `# {…}` line right after a command is what it prints, compared by shape; any other JSON it prints must not be an error |
//! | `<!-- example: stream -->` | shell commands that stream (`curl -N`) | each started alone, read until it printed the events of the `output` blocks after it (in order, other events between them allowed), then stopped; the output shown is the first command's, the others are held to its shape only |
//! | `<!-- example: output -->` | what the `run`, `stream` or `node` block before it prints | compared with what that block printed |
//! | `<!-- example: websocat -->` | a websocat session (`$ websocat URL`, `>` sent, `<` received) or `websocat -U URL` lines | the test's own WebSocket client (websocat is not installed here); `message` frames of the ticker between the lines shown are passed over |
//! | `<!-- example: node -->` | JavaScript for Node.js | `node --experimental-network-imports --experimental-websocket --input-type=module` |
//! | `<!-- example: json -->` | a JSON object Herald sends | its shape against the same object taken from `herald dev` |
//! | `<!-- example: toml -->` | a config fragment | `Config::parse`, with `[kafka] brokers` and a route added when it has none |
//! | `<!-- example: kafka -->` | a gap (JSON or an SSE event) | a gap Herald sends on the test broker after DeleteRecords, which `herald dev`'s embedded broker refuses |
//! | `<!-- example: admin -->` | admin API calls (`http://127.0.0.1:9090`, `$HERALD_ADMIN_KEY`) | run in document order as `run` blocks, against a node on the test broker with an admin listener and a subscriber (`herald dev` has no admin API) |
//! | `<!-- example: skip: REASON -->` | anything that cannot run here | listed (printed) with its reason |
//!
//! An unmarked block fails [`every_fenced_block_is_marked`]. In commands,
//! `127.0.0.1:8080` becomes the test's `herald dev` address, `herald-dev-…`
//! its publish key and `127.0.0.1:PORT` its embedded broker.
//!
//! **Shapes.** Objects must have the same field names; `type`, `channel`,
//! `channels`, `topic`, `code`, `event` and `reason` the same values; `data`
//! (the record's payload) anything; `key` a string or null; other
//! strings, numbers, booleans and null only the same JSON type; a cursor
//! (`h…`) only a cursor that [`Cursor::decode`] accepts; an array, the shape
//! of its first element (an empty one must stay empty). Plain text lines
//! are compared with cursors and numbers blanked out.
//!
//! **Cursors.** Every cursor the docs show is checked
//! ([`every_cursor_in_the_docs_is_one_herald_makes`]): it decodes, names
//! `herald dev`'s topics with all their partitions, and in an envelope is
//! the position after its record; a shortened one (`hAQRuZXdz…`) is the
//! start of what Herald encodes for a topic of `herald dev`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use herald::config::Config;
use herald::dev::DEV_TOPICS;
use herald::hub::cursor::Cursor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

const DOCS: &[&str] = &[
    "README.md",
    "docs/protocol.md",
    "docs/client.md",
    "docs/operations.md",
];

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Run,
    Admin,
    Stream,
    Output,
    Websocat,
    Node,
    Json,
    Toml,
    Kafka,
    Skip(String),
}

#[derive(Debug, Clone)]
struct Block {
    file: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    kind: Option<Kind>,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn read_doc(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn parse_marker(line: &str) -> Option<Result<Kind, String>> {
    let inner = line
        .trim()
        .strip_prefix("<!-- example:")?
        .strip_suffix("-->")?
        .trim();
    Some(match inner {
        "run" => Ok(Kind::Run),
        "admin" => Ok(Kind::Admin),
        "stream" => Ok(Kind::Stream),
        "output" => Ok(Kind::Output),
        "websocat" => Ok(Kind::Websocat),
        "node" => Ok(Kind::Node),
        "json" => Ok(Kind::Json),
        "toml" => Ok(Kind::Toml),
        "kafka" => Ok(Kind::Kafka),
        other => match other.strip_prefix("skip:") {
            Some(reason) if !reason.trim().is_empty() => Ok(Kind::Skip(reason.trim().to_owned())),
            _ => Err(format!(
                "unknown example marker `{other}` (a skip needs a reason)"
            )),
        },
    })
}

/// The fenced blocks of `file`, in order, with their markers.
fn blocks(file: &'static str) -> Vec<Block> {
    let text = read_doc(file);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with("```") {
            i += 1;
            continue;
        }
        let start = i;
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with("```"))
            .copied()
            .collect();
        i += body.len() + 2;
        let kind = start
            .checked_sub(1)
            .and_then(|p| parse_marker(lines[p]))
            .map(|k| k.unwrap_or_else(|e| panic!("{file}:{start}: {e}")));
        out.push(Block {
            file,
            line: start + 1,
            kind,
            text: body.join("\n"),
        });
    }
    out
}

fn all_blocks() -> Vec<Block> {
    DOCS.iter().flat_map(|f| blocks(f)).collect()
}

#[test]
fn every_fenced_block_is_marked() {
    let all = all_blocks();
    let unmarked: Vec<String> = all
        .iter()
        .filter(|b| b.kind.is_none())
        .map(|b| format!("{}: {}", b.at(), b.text.lines().next().unwrap_or("")))
        .collect();
    assert!(
        unmarked.is_empty(),
        "fenced blocks without an `<!-- example: … -->` line above them (see tests/docs.rs):\n{}",
        unmarked.join("\n")
    );
    println!("examples not run here:");
    for b in &all {
        if let Some(Kind::Skip(reason)) = &b.kind {
            println!("  {}: {reason}", b.at());
        }
    }
    let run = all
        .iter()
        .filter(|b| !matches!(b.kind, Some(Kind::Skip(_))))
        .count();
    println!("{run} of {} blocks are checked", all.len());
    // The parser sees the docs at all.
    assert!(all.len() > 30, "only {} blocks found", all.len());
}

// ---------------------------------------------------------------- shapes

const LITERAL: &[&str] = &[
    "type", "channel", "channels", "topic", "code", "event", "reason",
];

fn is_cursor_text(s: &str) -> bool {
    s.len() > 4
        && s.starts_with("hA")
        && s[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `doc` and `got` have the same shape (see the module's comment); the
/// error names the path of the first difference.
fn same_shape(doc: &Value, got: &Value, path: &str, literal: bool) -> Result<(), String> {
    let field = path.rsplit('.').next().unwrap_or("");
    let differs = || Err(format!("at {path}: the docs show {doc}, Herald sent {got}"));
    if field == "data" {
        // The record's payload: whatever was produced (the ticker's, a
        // publish's).
        return Ok(());
    }
    if field == "key" && (doc.is_string() || doc.is_null()) && (got.is_string() || got.is_null()) {
        // A record key: a string, or null for a record without one.
        return Ok(());
    }
    match (doc, got) {
        (Value::Object(d), Value::Object(g)) => {
            let dk: BTreeSet<&String> = d.keys().collect();
            let gk: BTreeSet<&String> = g.keys().collect();
            if dk != gk {
                return Err(format!(
                    "at {path}: the docs show the fields {dk:?}, Herald sent {gk:?} ({got})"
                ));
            }
            for (k, v) in d {
                same_shape(v, &g[k], &format!("{path}.{k}"), literal)?;
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(g)) => match (d.first(), g.is_empty()) {
            (None, true) => Ok(()),
            (Some(first), false) => {
                // A list of names (`channels` of `subscribed`) is literal;
                // a list of objects (the admin API's `channels`) by shape.
                if literal && LITERAL.contains(&field) && d.iter().all(Value::is_string) && d != g {
                    return differs();
                }
                for (i, item) in g.iter().enumerate() {
                    same_shape(first, item, &format!("{path}[{i}]"), literal)?;
                }
                Ok(())
            }
            _ => differs(),
        },
        (Value::String(d), Value::String(g)) => {
            if is_cursor_text(d.trim_end_matches(['…', '.'])) {
                return Cursor::decode(g)
                    .map(|_| ())
                    .map_err(|e| format!("at {path}: {g:?} is not a cursor: {e}"));
            }
            if literal && LITERAL.contains(&field) && d != g {
                return differs();
            }
            Ok(())
        }
        (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => differs(),
    }
}

/// One SSE event: its fields in order.
type Event = Vec<(String, String)>;

fn sse_events(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let mut current = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            if !current.is_empty() {
                events.push(std::mem::take(&mut current));
            }
        } else if !line.starts_with(':') {
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            current.push((k.to_owned(), v.trim_start().to_owned()));
        }
    }
    if !current.is_empty() {
        events.push(current);
    }
    events
}

fn event_name(e: &Event) -> &str {
    e.iter()
        .find(|(k, _)| k == "event")
        .map_or("message", |(_, v)| v.as_str())
}

fn same_event(doc: &Event, got: &Event, literal: bool) -> Result<(), String> {
    let names = |e: &Event| e.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    if names(doc) != names(got) {
        return Err(format!(
            "the docs show the event {doc:?}, Herald sent {got:?}"
        ));
    }
    for ((k, d), (_, g)) in doc.iter().zip(got) {
        let ok = match k.as_str() {
            "event" => d == g,
            "retry" => g.parse::<u64>().is_ok(),
            "id" => Cursor::decode(g).is_ok(),
            "data" => {
                let d: Value = serde_json::from_str(d).map_err(|e| format!("docs: {d}: {e}"))?;
                let g: Value = serde_json::from_str(g).map_err(|e| format!("Herald: {g}: {e}"))?;
                same_shape(&d, &g, "data", literal)?;
                true
            }
            _ => d == g,
        };
        if !ok {
            return Err(format!("{k}: the docs show {d:?}, Herald sent {g:?}"));
        }
    }
    Ok(())
}

/// A line of text with cursors and numbers blanked out.
fn text_shape(line: &str) -> String {
    let cursors = regex::Regex::new(r"\bhA[A-Za-z0-9_-]+").unwrap();
    let numbers = regex::Regex::new(r"[0-9]+").unwrap();
    numbers
        .replace_all(&cursors.replace_all(line.trim(), "<cursor>"), "<n>")
        .into_owned()
}

/// JSON that may span lines (the docs wrap long objects).
fn parse_json(text: &str, at: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{at}: not JSON ({e}):\n{text}"))
}

// --------------------------------------------------------------- cursors

/// What Herald encodes for the start of every partition of `topics`.
fn start_of(topics: &[(&str, i32)]) -> String {
    let mut c = Cursor::new();
    for (t, n) in topics {
        for p in 0..*n {
            c.set(t, p, 0);
        }
    }
    c.encode()
}

#[test]
fn every_cursor_in_the_docs_is_one_herald_makes() {
    let token = regex::Regex::new(r"\bhA[A-Za-z0-9_-]{2,}(…|\.\.\.)?").unwrap();
    // A one-line object with one nested object: an envelope and its data.
    let envelope = regex::Regex::new(r"\{[^{}]*\{[^{}]*\}[^{}]*\}").unwrap();
    // Every subset of the dev topics, at their start: a shortened cursor
    // must begin what one of them begins with.
    let mut starts = Vec::new();
    for mask in 1..(1u32 << DEV_TOPICS.len()) {
        let topics: Vec<(&str, i32)> = DEV_TOPICS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, t)| *t)
            .collect();
        starts.push(start_of(&topics));
    }
    let partitions: BTreeMap<&str, i32> = DEV_TOPICS.iter().copied().collect();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in DOCS {
        for (n, line) in read_doc(file).lines().enumerate() {
            let at = format!("{file}:{}", n + 1);
            for m in token.find_iter(line) {
                seen += 1;
                let text = m.as_str();
                let shortened = text.trim_end_matches(['…', '.']);
                if shortened.len() != text.len() {
                    if !starts.iter().any(|s| s.starts_with(shortened)) {
                        wrong.push(format!(
                            "{at}: {text} is not how Herald's cursors for herald dev's topics begin ({starts:?})"
                        ));
                    }
                    continue;
                }
                let cursor = match Cursor::decode(text) {
                    Ok(c) => c,
                    Err(e) => {
                        wrong.push(format!("{at}: {text}: {e}"));
                        continue;
                    }
                };
                for topic in cursor.topics() {
                    let Some(&count) = partitions.get(topic) else {
                        wrong.push(format!(
                            "{at}: {text} names {topic}, not a herald dev topic"
                        ));
                        continue;
                    };
                    let named: Vec<i32> = cursor
                        .iter()
                        .filter(|(t, _, _)| *t == topic)
                        .map(|(_, p, _)| p)
                        .collect();
                    if named != (0..count).collect::<Vec<_>>() {
                        wrong.push(format!(
                            "{at}: {text} names partitions {named:?} of {topic}; Herald names all {count}"
                        ));
                    }
                }
            }
            // An envelope's cursor is the position after its record.
            for object in envelope.find_iter(line) {
                let Ok(v) =
                    serde_json::from_str::<Value>(object.as_str().trim_start_matches("data: "))
                else {
                    continue;
                };
                let (Some(c), Some(t), Some(p), Some(o)) = (
                    v["cursor"].as_str(),
                    v["topic"].as_str(),
                    v["partition"].as_i64(),
                    v["offset"].as_i64(),
                ) else {
                    continue;
                };
                if let Ok(cursor) = Cursor::decode(c)
                    && cursor.get(t, p as i32) != Some(o + 1)
                {
                    wrong.push(format!(
                        "{at}: the cursor {c} of the record at {t}/{p}/{o} is not the position after it"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cursors in the docs:\n{}",
        wrong.join("\n")
    );
    assert!(seen >= 15, "only {seen} cursors found in the docs");
}

// ----------------------------------------------------------- herald dev

struct Dev {
    addr: SocketAddr,
    key: String,
    brokers: String,
    _process: tokio::process::Child,
}

impl Dev {
    fn substitute(&self, text: &str) -> String {
        text.replace("127.0.0.1:8080", &self.addr.to_string())
            .replace("herald-dev-…", &self.key)
            .replace("127.0.0.1:PORT", &self.brokers)
    }
}

/// `herald dev` on a free port with a fast ticker; the banner it printed.
async fn start_dev() -> (Dev, String) {
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["dev", "--listen", &addr.to_string(), "--ticker", "100ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herald dev");
    let mut lines = tokio::io::BufReader::new(process.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(TIMEOUT, async {
        let mut banner = String::new();
        while let Some(line) = lines.next_line().await.expect("the banner") {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("docs/protocol.md, \"Gaps\"") {
                return banner;
            }
        }
        panic!("the banner ended without its note on gaps:\n{banner}");
    })
    .await
    .expect("the banner");
    // The rest of stdout is not read; keep the pipe drained.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let info = dev_info(addr).await;
    let dev = Dev {
        addr,
        key: info["publish"]["api_key"].as_str().unwrap().to_owned(),
        brokers: info["brokers"].as_str().unwrap().to_owned(),
        _process: process,
    };
    (dev, banner)
}

/// Runs a `run` block: the output of each command, in order.
async fn run_commands(dev: &Dev, block: &Block) -> Vec<(String, Vec<String>, String)> {
    run_commands_with(&|c| dev.substitute(c), block).await
}

/// As [`run_commands`], with `substitute` applied to each command.
async fn run_commands_with(
    substitute: &dyn Fn(&str) -> String,
    block: &Block,
) -> Vec<(String, Vec<String>, String)> {
    // (command, the `# …` lines documented after it, what it printed)
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.text.lines() {
        let line = line.trim_end();
        if let Some(comment) = line.strip_prefix("# ") {
            if let Some(last) = steps.last_mut()
                && (comment.starts_with('{') || comment.starts_with('['))
            {
                last.1.push(comment.to_owned());
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            steps.push((line.to_owned(), Vec::new()));
        }
    }
    const STEP: &str = "@@tests/docs.rs step@@";
    let script: String = steps
        .iter()
        .map(|(c, _)| format!("{}\nprintf '\\n{STEP}\\n'\n", substitute(c)))
        .collect();
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new("sh")
            .args(["-c", &script])
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{}: did not end within {TIMEOUT:?}", block.at()))
    .expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: exit {:?}\n{script}\n{stdout}\n{}",
        block.at(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<&str> = stdout.split(&format!("\n{STEP}\n")).collect();
    steps
        .into_iter()
        .zip(printed)
        .map(|((c, d), p)| (c, d, p.trim().to_owned()))
        .collect()
}

/// Every `curl … -d '{"channel",…,"data"}' …/publish` of a run block: the
/// record it says Kafka wrote (`{"topic","partition","offset"}`) reaches
/// `sse`, a subscriber of the channels, once, with the channel and data
/// published. The dev ticker's records in between are passed over; the
/// published records may arrive in any order, since Kafka orders records
/// within a partition only and these go to different topics.
async fn check_published_arrive(
    block: &Block,
    results: &[(String, Vec<String>, String)],
    sse: &mut Sse,
) {
    // Where each was written: (its command, the body it published).
    let mut awaited: BTreeMap<(String, i64, i64), (String, Value)> = BTreeMap::new();
    for (command, _, printed) in results {
        if !command.contains("/publish") {
            continue;
        }
        let at = format!("{}: `{command}`", block.at());
        let body = command
            .split("-d '")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_else(|| panic!("{at}: no -d '…' body"));
        let body = parse_json(body, &at);
        let written = parse_json(printed.lines().find(|l| l.starts_with('{')).unwrap(), &at);
        let position =
            position_of(&written).unwrap_or_else(|| panic!("{at}: printed no position: {written}"));
        assert!(
            awaited.insert(position, (at, body)).is_none(),
            "{}: two publishes written at {written}",
            block.at()
        );
    }
    assert!(!awaited.is_empty(), "{}: publishes nothing", block.at());
    // The ticker's records keep coming: one deadline for them all, not
    // one per event, or a record never delivered would hang the test.
    let deadline = Instant::now() + TIMEOUT;
    let mut arrived = BTreeSet::new();
    while !awaited.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{}: no subscriber of their channels got the records Kafka wrote at {:?} \
             within {TIMEOUT:?}",
            block.at(),
            awaited.keys().collect::<Vec<_>>()
        );
        let message = sse.next_message().await.json();
        let Some(position) = position_of(&message) else {
            panic!("{}: a message with no position: {message}", block.at());
        };
        assert!(
            arrived.insert(position.clone()),
            "{}: {position:?} arrived twice",
            block.at()
        );
        if let Some((at, body)) = awaited.remove(&position) {
            assert_eq!(
                (&message["channel"], &message["data"]),
                (&body["channel"], &body["data"]),
                "{at}: what the subscriber got"
            );
        }
    }
}

/// A message's or a publish answer's `(topic, partition, offset)`.
fn position_of(v: &Value) -> Option<(String, i64, i64)> {
    Some((
        v["topic"].as_str()?.to_owned(),
        v["partition"].as_i64()?,
        v["offset"].as_i64()?,
    ))
}

fn check_run(dev: &Dev, block: &Block, results: &[(String, Vec<String>, String)]) {
    let _ = dev;
    check_outputs(block, results);
}

/// Each command's printed JSON lines: none an error unless the docs show
/// one, and the same shapes as the `# {…}` lines documented after it.
fn check_outputs(block: &Block, results: &[(String, Vec<String>, String)]) {
    for (command, documented, printed) in results {
        let at = format!("{}: `{command}`", block.at());
        let got: Vec<Value> = printed
            .lines()
            .filter(|l| l.starts_with('{') || l.starts_with('['))
            .map(|l| parse_json(l, &at))
            .collect();
        let shows_error = documented.iter().any(|d| d.contains("\"error\""));
        for g in &got {
            assert!(
                shows_error || g.get("error").is_none(),
                "{at} printed an error: {g}"
            );
        }
        if !documented.is_empty() {
            assert_eq!(
                got.len(),
                documented.len(),
                "{at}: the docs show {documented:?}, it printed {printed:?}"
            );
            for (d, g) in documented.iter().zip(&got) {
                same_shape(&parse_json(d, &at), g, "", true)
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
            }
        }
    }
}

/// Starts `command`, reads SSE events until `expected` were seen in order
/// (anything between allowed), then stops it.
async fn check_stream(dev: &Dev, at: &str, command: &str, expected: &[Event], literal: bool) {
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &format!("exec {}", dev.substitute(command))])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sh");
    let mut stdout = child.stdout.take().unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let events = sse_events(&text);
        // Complete events only: the last may still be arriving.
        let complete = if text.ends_with("\n\n") {
            events.len()
        } else {
            events.len().saturating_sub(1)
        };
        let events = &events[..complete];
        let mut want = expected.iter();
        let mut next = want.next();
        for (i, e) in events.iter().enumerate() {
            let Some(w) = next else { break };
            // The first event is what the stream opens with.
            if i == 0 || event_name(w) == event_name(e) {
                same_event(w, e, literal).unwrap_or_else(|err| panic!("{at}: `{command}`: {err}"));
                next = want.next();
            }
        }
        if next.is_none() && (!expected.is_empty() || !events.is_empty()) {
            break;
        }
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stdout.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!("{at}: `{command}` printed no {next:?} within {TIMEOUT:?}:\n{text}")
            })
            .unwrap();
        assert!(n > 0, "{at}: `{command}` ended:\n{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().await.ok();
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as JSON.
async fn next_json(ws: &mut WsStream, at: &str) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{at}: no frame within {TIMEOUT:?}"))
            .expect("the socket ended")
            .expect("a frame");
        if let Message::Text(t) = frame {
            return parse_json(&t, at);
        }
    }
}

async fn check_websocat(dev: &Dev, block: &Block) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let at = block.at();
    let text = dev.substitute(&block.text);
    if let Some(url) = text.lines().next().unwrap().strip_prefix("$ websocat ") {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.trim())
            .await
            .unwrap_or_else(|e| panic!("{at}: {url}: {e}"));
        for line in text.lines().skip(1) {
            if let Some(sent) = line.strip_prefix("> ") {
                ws.send(Message::text(sent)).await.unwrap();
            } else if let Some(doc) = line.strip_prefix("< ") {
                let doc = parse_json(doc, &at);
                // The ticker's records keep coming on `news`: a deadline
                // for the reply, not per frame.
                let deadline = Instant::now() + TIMEOUT;
                let got = loop {
                    let got = next_json(&mut ws, &at).await;
                    if got["type"] != "message" || doc["type"] == "message" {
                        break got;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{at}: {line}: no such frame within {TIMEOUT:?}, only messages"
                    );
                };
                same_shape(&doc, &got, "", true).unwrap_or_else(|e| panic!("{at}: {line}: {e}"));
            }
        }
        return;
    }
    for line in text.lines() {
        let url = line
            .strip_prefix("websocat -U ")
            .unwrap_or_else(|| panic!("{at}: not a websocat line: {line}"))
            .trim_matches('\'');
        let (mut ws, response) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("{at}: {url}: {e}"));
        assert_eq!(response.status(), 101, "{at}: {url}");
        let channels = url.matches("channel=").count();
        for _ in 0..channels {
            let got = next_json(&mut ws, &at).await;
            assert_eq!(got["type"], "subscribed", "{at}: {url}: {got}");
        }
    }
}

async fn check_node(dev: &Dev, block: &Block, expected: &[String]) {
    let at = block.at();
    let mut child = tokio::process::Command::new("node")
        .args([
            "--no-warnings",
            "--experimental-network-imports",
            "--experimental-websocket",
            "--input-type=module",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js 20+)");
    let script = dev.substitute(&block.text);
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, script.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{at}: node did not end within {TIMEOUT:?}"))
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{at}: node: {:?}\n{printed}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = printed.lines().map(text_shape).collect();
    let want: Vec<String> = expected
        .iter()
        .flat_map(|e| e.lines())
        .map(text_shape)
        .collect();
    assert_eq!(got, want, "{at}: node printed:\n{printed}");
}

/// The object Herald sends that a `json` block shows, from `herald dev`.
async fn herald_sends(dev: &Dev, doc: &Value, at: &str) -> Option<Value> {
    let addr = dev.addr;
    let start = start_of(&[("news", 3)]);
    let get = |path: String| async move {
        let body = reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let first = || async {
        let (messages, _) = poll_ok(addr, &format!("channel=news&cursor={start}&limit=1")).await;
        messages.into_iter().next().expect("a ticker record")
    };
    if doc.get("error").is_some() {
        return Some(get("/poll?channel=news&cursor=hA!".into()).await);
    }
    if doc.get("messages").is_some() {
        return Some(get(format!("/poll?channel=news&cursor={start}&limit=1")).await);
    }
    if doc.get("truncated").is_some() {
        // A pushed envelope: its `truncated` and cursor at the record are
        // Web Push's own (tests/push.rs); the rest is the envelope.
        let mut envelope = first().await;
        envelope.as_object_mut()?.remove("data");
        envelope["truncated"] = json!(true);
        return Some(envelope);
    }
    if doc.get("offset").is_some() {
        return Some(first().await);
    }
    if doc
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("key"))
    {
        return Some(get("/push/vapid-public-key".into()).await);
    }
    panic!("{at}: tests/docs.rs does not know which answer of Herald this is: {doc}");
}

/// Every `run`, `stream`, `output`, `websocat`, `node` and `json` example,
/// in the order of the docs, against one `herald dev`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_against_herald_dev_as_documented() {
    let (dev, banner) = start_dev().await;
    assert!(
        banner.contains("DeleteRecords") && banner.contains("scripts/kafka.sh"),
        "the banner does not say that gaps need a real broker:\n{banner}"
    );
    // The examples show the ticker's records: wait for a few.
    let start = start_of(&[("news", 3)]);
    let query = format!("channel=news&cursor={start}&limit=10");
    let begun = Instant::now();
    while poll_ok(dev.addr, &query).await.0.len() < 5 {
        assert!(begun.elapsed() < TIMEOUT, "the dev ticker produced nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = all_blocks();
    let mut ran = 0;
    let mut i = 0;
    while i < all.len() {
        let block = &all[i];
        // The output blocks that follow it (up to the next block of another kind).
        let outputs: Vec<&Block> = all[i + 1..]
            .iter()
            .take_while(|b| b.file == block.file && b.kind == Some(Kind::Output))
            .collect();
        i += 1;
        match block.kind.as_ref().unwrap() {
            Kind::Run => {
                // What a block publishes, a subscriber receives.
                let mut subscriber = if block.text.contains("/publish") {
                    Some(Sse::connect(dev.addr, "channel=news&channel=user.k7", None).await)
                } else {
                    None
                };
                let results = run_commands(&dev, block).await;
                check_run(&dev, block, &results);
                if let Some(sse) = &mut subscriber {
                    check_published_arrive(block, &results, sse).await;
                }
                assert!(
                    outputs.is_empty(),
                    "{}: put a run's output in `# ` lines",
                    block.at()
                );
            }
            Kind::Stream => {
                let expected: Vec<Event> =
                    outputs.iter().flat_map(|o| sse_events(&o.text)).collect();
                let commands = block
                    .text
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
                // The output shown is the first command's; the others
                // print the same shape, for their own channels.
                for (n, command) in commands.enumerate() {
                    check_stream(&dev, &block.at(), command, &expected, n == 0).await;
                }
                i += outputs.len();
            }
            Kind::Node => {
                let expected: Vec<String> = outputs.iter().map(|o| o.text.clone()).collect();
                check_node(&dev, block, &expected).await;
                i += outputs.len();
            }
            Kind::Websocat => check_websocat(&dev, block).await,
            Kind::Json => {
                let doc = parse_json(&block.text, &block.at());
                let got = herald_sends(&dev, &doc, &block.at()).await.unwrap();
                // A pushed envelope (Web Push's example channel is not
                // herald dev's) is held to the envelope's shape only.
                let literal = doc.get("truncated").is_none();
                same_shape(&doc, &got, "", literal)
                    .unwrap_or_else(|e| panic!("{}: {e}", block.at()));
            }
            Kind::Output => panic!(
                "{}: an output block after no run, stream or node block",
                block.at()
            ),
            Kind::Toml | Kind::Kafka | Kind::Admin | Kind::Skip(_) => continue,
        }
        ran += 1;
        println!("ran {}", block.at());
    }
    assert!(ran >= 10, "only {ran} examples ran");
}

// ---------------------------------------------------------------- config

#[test]
fn the_toml_examples_are_accepted_by_the_config_loader() {
    let mut checked = 0;
    for block in all_blocks().iter().filter(|b| b.kind == Some(Kind::Toml)) {
        let mut text = block.text.clone();
        if !text.contains("[kafka]") {
            text = format!("[kafka]\nbrokers = \"127.0.0.1:9092\"\n\n{text}");
        }
        if !text.contains("[[route]]") {
            text.push_str("\n\n[[route]]\ntopic = \"news\"\nchannel = \"news\"\n");
        }
        Config::parse(&text, &block.at()).unwrap_or_else(|e| panic!("{}: {e}\n{text}", block.at()));
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} toml examples");
}

/// The keys a table of the config accepts, from the loader's own refusal:
/// given an unknown key, serde names every field it expects. `None` when
/// the table takes any key (`[kafka.options]`) or is not a table.
fn accepted_keys(table: &[&str]) -> Option<Vec<String>> {
    let probe = |header: String| {
        let text = format!("{header}\n__probe = 1\n");
        let err = Config::parse(&text, "probe").err()?.to_string();
        let rest = err.split("unknown field `__probe`").nth(1)?.to_owned();
        let names = regex::Regex::new("`([A-Za-z0-9_]+)`").unwrap();
        Some(
            names
                .captures_iter(&rest)
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>(),
        )
    };
    if table.is_empty() {
        return probe(String::new());
    }
    let name = table.join(".");
    probe(format!("[{name}]")).or_else(|| probe(format!("[[{name}]]")))
}

/// Every `table.key` the config accepts, derived from the code.
fn every_config_key() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut tables: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(table) = tables.pop() {
        let path: Vec<&str> = table.iter().map(String::as_str).collect();
        for key in accepted_keys(&path).unwrap_or_default() {
            let mut sub = table.clone();
            sub.push(key);
            keys.insert(sub.join("."));
            tables.push(sub);
        }
    }
    keys
}

/// The `table.key` names a TOML file shows, commented out or not.
fn keys_named_in(text: &str) -> BTreeSet<String> {
    let header = regex::Regex::new(r"^\[\[?([a-z_.]+)\]\]?").unwrap();
    let key = regex::Regex::new(r"^([a-z_]+)\s*=").unwrap();
    let mut table = String::new();
    let mut named = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
        if let Some(h) = header.captures(line) {
            table = h[1].to_owned();
            let mut path = String::new();
            for part in table.split('.') {
                path = if path.is_empty() {
                    part.to_owned()
                } else {
                    format!("{path}.{part}")
                };
                named.insert(path.clone());
            }
        } else if let Some(k) = key.captures(line) {
            named.insert(if table.is_empty() {
                k[1].to_owned()
            } else {
                format!("{table}.{}", &k[1])
            });
        }
    }
    named
}

#[test]
fn config_herald_toml_names_every_key_and_passes_check() {
    let every = every_config_key();
    // The probe sees the config at all.
    for known in [
        "kafka.brokers",
        "ws.ping_interval",
        "poll.max_wait",
        "limits.max_long_polls",
        "route.channel",
    ] {
        assert!(
            every.contains(known),
            "the config's keys, as probed, lack {known}: {every:?}"
        );
    }
    let file = "config/herald.toml";
    let text = read_doc(file);
    assert!(
        text.starts_with("# Herald configuration: every key"),
        "{file}"
    );
    let named = keys_named_in(&text);
    let missing: Vec<&String> = every.difference(&named).collect();
    assert!(
        missing.is_empty(),
        "{file} says it has every key but lacks {missing:?}"
    );
    let unknown: Vec<&String> = named
        .difference(&every)
        .filter(|k| !k.starts_with("kafka.options."))
        .collect();
    assert!(
        unknown.is_empty(),
        "{file} names keys Herald does not accept: {unknown:?}"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let (code, out, err) = run_herald(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "herald check --config {file}: {out}{err}");
}

// ---------------------------------------------------------- admin API

/// The `admin` examples (`docs/operations.md`, "Admin API"), in document
/// order, against a node on the test broker with an admin listener, the
/// `[admin]` key in `$HERALD_ADMIN_KEY`, a config source to reload from,
/// and a subscriber of `room.1` whose token's subject is `user-42` (what
/// the examples list and disconnect). The drain comes last in the docs,
/// so it drains a node nothing else uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_examples_run_against_a_node_with_the_admin_api() {
    const KEY: &str = "the-docs-admin-key-0123456789";
    const SECRET: &str = "the docs' secret, of at least thirty-two bytes";
    let examples: Vec<Block> = all_blocks()
        .into_iter()
        .filter(|b| b.kind == Some(Kind::Admin))
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    let topic = unique_topic("docs-admin");
    create_topic(&topic, 1).await;
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
         [auth]\nhmac_secret = \"{SECRET}\"\n\
         [admin]\napi_keys = [\"{KEY}\"]\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"room.{{key}}\"\n",
        bootstrap()
    );
    let config = Config::parse(&text, "docs").expect("the admin test's config");
    let herald = start(config.clone(), &[(&topic, 1)]).await;
    herald.set_config_source(std::sync::Arc::new(move || Ok(config.clone())));
    let admin = herald.admin_addr().expect("an admin listener");
    let token = hs256(
        SECRET,
        &json!({"sub": "user-42", "exp": now_secs() + 600, "channels": ["room.*"]}),
    );
    let subscriber = Sse::connect(
        herald.local_addr(),
        &format!("channel=room.1&token={token}"),
        None,
    )
    .await;
    assert_eq!(subscriber.status, 200);
    let substitute = |c: &str| {
        c.replace("127.0.0.1:9090", &admin.to_string())
            .replace("$HERALD_ADMIN_KEY", KEY)
    };
    for block in &examples {
        let results = run_commands_with(&substitute, block).await;
        check_outputs(block, &results);
        println!("ran {}", block.at());
    }
    drop(subscriber);
    herald.stop().await;
}

// ----------------------------------------------------------------- gaps

/// The `kafka` examples, a gap as JSON and as an SSE event, against what
/// Herald sends on the test broker once records below a cursor are deleted
/// (the embedded broker of `herald dev` refuses DeleteRecords).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gap_examples_match_a_gap_on_the_test_broker() {
    let examples: Vec<Block> = all_blocks()
        .into_iter()
        .filter(|b| b.kind == Some(Kind::Kafka))
        .collect();
    assert!(examples.len() >= 2, "{examples:?}");
    // Memory holds the last 5 records: a cursor at 0 is read back from
    // Kafka, which deleted offsets 0 to 19, as the docs' example has it.
    let (topic, herald) =
        herald_with_topic_and("docs-gap", 1, "news", |c| c.hub.history_messages = 5).await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    for n in 0..30 {
        producer.send_n(&topic, "k", n).await;
    }
    delete_records_below(&topic, 0, 20).await;
    let mut from = Cursor::new();
    from.set(&topic, 0, 0);
    let cursor = from.encode();
    let (status, polled) = poll(addr, &format!("channel=news&cursor={cursor}")).await;
    assert_eq!(status, 200, "{polled}");
    let mut sse = Sse::connect(addr, "channel=news", Some(&cursor)).await;
    let gap_event = loop {
        let e = sse.next_raw().await.expect("the stream ended before a gap");
        if e.event.as_deref() == Some("gap") {
            break e;
        }
    };
    let mut got_event: Event = Vec::new();
    for (k, v) in [
        ("event", &gap_event.event),
        ("id", &gap_event.id),
        ("data", &gap_event.data),
    ] {
        if let Some(v) = v {
            got_event.push((k.to_owned(), v.clone()));
        }
    }
    let gap = &polled["gap"][0];
    assert_eq!(
        (&gap["partitions"][0]["from"], &gap["partitions"][0]["to"]),
        (&json!(0), &json!(20)),
        "{polled}"
    );
    for block in &examples {
        // The docs' topic is `news`; this test's is its own.
        let text = block
            .text
            .replace("\"topic\":\"news\"", &format!("\"topic\":\"{topic}\""));
        if text.starts_with('{') {
            same_shape(&parse_json(&text, &block.at()), gap, "", true)
                .unwrap_or_else(|e| panic!("{}: {e}", block.at()));
        } else {
            let doc = sse_events(&text);
            assert_eq!(doc.len(), 1, "{}", block.at());
            same_event(&doc[0], &got_event, true).unwrap_or_else(|e| panic!("{}: {e}", block.at()));
        }
    }
    herald.stop().await;
}
