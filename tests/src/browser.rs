//! A browser test's driver: a Node script in `tests/browser/` (playwright-core driving Debian's
//! Chromium) started with its settings as JSON. It talks in JSON lines: each line it prints is a
//! message (most ask a question the test answers with one line); pixels are judged on the Rust
//! side.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::util::workspace_root;

/// Debian's Chromium itself (`/usr/bin/chromium` is a wrapper script).
pub const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// Where screenshots are kept: `$ATRIUM_TEST_ARTIFACTS`, else a folder in the temporary one.
pub fn artifacts() -> PathBuf {
    let dir = std::env::var_os("ATRIUM_TEST_ARTIFACTS")
        .map_or_else(|| std::env::temp_dir().join("atrium-artifacts"), Into::into);
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

/// A running driver script; killed on drop.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    /// Checks that playwright-core and Chromium are installed, and starts
    /// `tests/browser/<script>` with `cfg` as its argument.
    pub fn start(script: &str, cfg: &Value) -> anyhow::Result<Self> {
        let dir = workspace_root().join("tests/browser");
        if !dir.join("node_modules/playwright-core").is_dir() {
            bail!(
                "playwright-core is not installed in tests/browser (scripts/test.sh runs `npm ci` there)"
            );
        }
        if !std::path::Path::new(CHROMIUM).exists() {
            bail!("{CHROMIUM} is missing (Debian package `chromium`; scripts/test.sh installs it)");
        }
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join(script))
            .arg(cfg.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("running node (Debian package `nodejs`)")?;
        let stdin = child.stdin.take().expect("piped");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Self { child, stdin, lines })
    }

    /// The next message, or `None` once the script has said all.
    pub async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        let Some(line) = self.lines.next_line().await? else { return Ok(None) };
        let msg = serde_json::from_str(&line).with_context(|| format!("driver said {line:?}"))?;
        Ok(Some(msg))
    }

    /// Answers the last message.
    pub async fn answer(&mut self, text: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{text}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Waits for the script to exit; an error when it failed.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("the browser driver failed ({status}); screenshots in {}", artifacts().display());
        }
        Ok(())
    }
}

/// Whether the screenshot at `path` shows a console desktop's text (its grey).
pub fn console_shows(path: &str) -> anyhow::Result<bool> {
    let s = crate::screen::Screen::from_png(&std::fs::read(path)?)?;
    Ok(s.count([0xaa, 0xaa, 0xaa]) > 500)
}

/// Runs `tests/browser/<script>` whose only question is whether the console desktop shows
/// (`{"shot": PATH, "phase": "console"}`), within `within`; returns its last `{"done": true,
/// ...}` message. A failure carries `logs()` (the services' logs).
pub async fn run_console_driver(
    script: &str,
    cfg: &Value,
    within: std::time::Duration,
    logs: impl Fn() -> String,
) -> anyhow::Result<Value> {
    let mut driver = Driver::start(script, cfg)?;
    let mut done = Value::Null;
    let run = async {
        while let Some(msg) = driver.next().await? {
            if msg["done"] == true {
                done = msg;
                continue;
            }
            let answer = match msg["phase"].as_str() {
                Some("console") => {
                    let shown = console_shows(msg["shot"].as_str().context("shot")?)?;
                    if shown { "ok" } else { "more" }
                }
                other => bail!("unknown phase {other:?}"),
            };
            driver.answer(answer).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(within, run)
        .await
        .with_context(|| format!("{script} took over {within:?}"))??;
    if let Err(e) = driver.finish().await {
        bail!("{e}\n{}", logs());
    }
    Ok(done)
}
