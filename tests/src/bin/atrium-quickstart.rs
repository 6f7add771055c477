//! The quick start's orchestrator (run by `scripts/quickstart.sh`): a throwaway directory
//! (slapd) seeded with demo users, the broker on SQLite, one node agent and the display proxy,
//! all on loopback ([`atrium_tests::stack::Stack`]); two demo pools (a graphical `desktop` and a
//! `console`) with a ready desktop each; then it
//! prints the URL and a demo login and waits for Ctrl+C, which stops everything it started.

use atrium_tests::stack::Stack;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    eprintln!("quickstart: starting the directory, broker, node and display proxy");
    let stack = Stack::start(Some(8080), Some(8090)).await?;
    eprintln!(
        "quickstart: logs in {}, {}, {}",
        stack.broker.dir().join("broker.log").display(),
        stack.node.dir.path().join("node.log").display(),
        stack.display.dir.path().join("display.log").display()
    );
    eprintln!("quickstart: booting desktops for the demo pools (under TCG this takes seconds)…");
    let (desktop, console) = tokio::join!(
        stack.pool("desktop", "desktop", 1, "1280x800"),
        stack.pool("console", "console", 1, "1280x800")
    );
    desktop?;
    console?;
    println!("ready: {}", stack.broker.url);
    println!("demo login: alice / alice-pw");
    eprintln!("quickstart: administrator: carol / carol-pw. Ctrl+C stops everything.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("quickstart: stopping");
    drop(stack);
    Ok(())
}
