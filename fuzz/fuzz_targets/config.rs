//! Configuration files and the environment variables that override them, through the loader
//! every service shares: the node agent's, the display proxy's and the gateway's TOML, and the
//! builtin VMM's JSON. A bad file or variable is an error naming what is wrong, never a panic.
//!
//! Input: a selector byte, then the file's text; after a line `%%` come `KEY=VALUE` lines.
#![no_main]

use std::path::Path;

use atrium_display::config::DisplayConfig;
use atrium_display::gateway::config::GatewayConfig;
use atrium_node::config::NodeConfig;
use atrium_vmm::VmmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (file, vars) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let env: Vec<(String, String)> = vars
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let origin = Path::new("fuzz.toml");
    match which % 4 {
        0 => {
            let _ = NodeConfig::from_parts("fuzz.toml", file, env);
        }
        1 => {
            let _ = DisplayConfig::from_text(origin, file, &env);
        }
        2 => {
            let _ = GatewayConfig::from_text(origin, file, &env);
        }
        _ => {
            let _ = VmmConfig::from_json(file);
        }
    }
});
