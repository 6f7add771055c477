//! The desktop's screen size, changed through X's RandR extension as `xrandr` would: a mode of
//! the asked size is made (QEMU's VGA, through the kernel's bochs driver, shows any size its
//! video memory holds), added to the connected output and set on its CRTC, with the screen
//! resized around it in the order X accepts. Modes the agent made earlier and no longer uses
//! are removed, so a window dragged through many sizes leaves nothing behind.

use x11rb::CURRENT_TIME;
use x11rb::connection::RequestConnection;
use x11rb::protocol::randr::{
    self, ConnectionExt as _, GetScreenResourcesCurrentReply, ModeFlag, ModeInfo, Rotation,
    SetConfig,
};
use x11rb::protocol::xproto::Window;

/// Names of the modes the agent makes end with this.
const MODE_SUFFIX: &str = "_atrium";

type XResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// A size in pixels.
pub type Size = (u16, u16);

/// Timings for a mode of this size at 60 Hz. A virtual display ignores them, but X and the
/// kernel check that they are consistent (sync within the totals, a clock that is not zero).
pub fn mode_info(width: u16, height: u16, name_len: u16) -> ModeInfo {
    let htotal = width.saturating_add(160);
    let vtotal = height.saturating_add(30);
    ModeInfo {
        id: 0,
        width,
        height,
        dot_clock: u32::from(htotal) * u32::from(vtotal) * 60,
        hsync_start: width.saturating_add(48),
        hsync_end: width.saturating_add(80),
        htotal,
        hskew: 0,
        vsync_start: height.saturating_add(3),
        vsync_end: height.saturating_add(9),
        vtotal,
        name_len,
        mode_flags: ModeFlag::HSYNC_NEGATIVE | ModeFlag::VSYNC_POSITIVE,
    }
}

/// One step of a size change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Resize the screen (the root window) to this.
    Screen(Size),
    /// Show the new mode on the output's CRTC.
    Crtc,
}

/// The order X accepts: a CRTC must always fit in the screen, so the screen grows (to the
/// larger of both sizes in each direction) before the new mode is set and shrinks after.
pub fn steps(screen: Size, want: Size) -> Vec<Step> {
    let outer = (screen.0.max(want.0), screen.1.max(want.1));
    let mut v = Vec::with_capacity(3);
    if outer != screen {
        v.push(Step::Screen(outer));
    }
    v.push(Step::Crtc);
    if outer != want {
        v.push(Step::Screen(want));
    }
    v
}

/// Millimetres for `px` pixels at 96 dots per inch (what programs that ask assume).
fn mm(px: u16) -> u32 {
    u32::from(px) * 254 / 960
}

fn mode_name(res: &GetScreenResourcesCurrentReply, index: usize) -> &[u8] {
    let start: usize = res.modes[..index].iter().map(|m| usize::from(m.name_len)).sum();
    let len = usize::from(res.modes[index].name_len);
    res.names.get(start..start + len).unwrap_or_default()
}

/// Gives the screen of `root` the size `want`. Returns the screen's size afterwards.
pub fn set_size(conn: &impl RequestConnection, root: Window, want: Size) -> XResult<Size> {
    conn.randr_query_version(1, 3)
        .map_err(err("RandR"))?
        .reply()
        .map_err(err("RandR (the X server has no RandR extension)"))?;
    let range = conn
        .randr_get_screen_size_range(root)
        .map_err(err("RandR size range"))?
        .reply()
        .map_err(err("RandR size range"))?;
    if want.0 < range.min_width
        || want.1 < range.min_height
        || want.0 > range.max_width
        || want.1 > range.max_height
    {
        return Err(format!(
            "{}x{} is outside what this screen takes ({}x{} to {}x{})",
            want.0, want.1, range.min_width, range.min_height, range.max_width, range.max_height
        ));
    }
    let res = conn
        .randr_get_screen_resources_current(root)
        .map_err(err("RandR resources"))?
        .reply()
        .map_err(err("RandR resources"))?;
    // The connected output and the CRTC that shows it (or the first it may use).
    let mut chosen = None;
    for &output in &res.outputs {
        let info = conn
            .randr_get_output_info(output, res.config_timestamp)
            .map_err(err("RandR output"))?
            .reply()
            .map_err(err("RandR output"))?;
        if info.connection != randr::Connection::CONNECTED {
            continue;
        }
        let crtc = if info.crtc != 0 { info.crtc } else { *info.crtcs.first().unwrap_or(&0) };
        if crtc != 0 {
            chosen = Some((output, crtc, info.modes));
            break;
        }
    }
    let (output, crtc, output_modes) = chosen.ok_or("the X server has no connected screen")?;
    let crtc_info = conn
        .randr_get_crtc_info(crtc, res.config_timestamp)
        .map_err(err("RandR CRTC"))?
        .reply()
        .map_err(err("RandR CRTC"))?;

    // A mode of that size the output has, else one made for it.
    let existing = res.modes.iter().find(|m| {
        m.width == want.0
            && m.height == want.1
            && !m.mode_flags.contains(ModeFlag::INTERLACE)
            && output_modes.contains(&m.id)
    });
    let mode = match existing {
        Some(m) => m.id,
        None => {
            let name = format!("{}x{}{MODE_SUFFIX}", want.0, want.1);
            let len = u16::try_from(name.len()).expect("a short name");
            let made = conn
                .randr_create_mode(root, mode_info(want.0, want.1, len), name.as_bytes())
                .map_err(err("RandR new mode"))?
                .reply()
                .map_err(err("RandR new mode"))?
                .mode;
            conn.randr_add_output_mode(output, made)
                .map_err(err("RandR output mode"))?
                .check()
                .map_err(err("RandR output mode"))?;
            made
        }
    };

    let screen = current_size(conn, root)?;
    if crtc_info.mode == mode && screen == want {
        return Ok(screen);
    }
    for step in steps(screen, want) {
        match step {
            Step::Screen((w, h)) => conn
                .randr_set_screen_size(root, w, h, mm(w), mm(h))
                .map_err(err("RandR screen size"))?
                .check()
                .map_err(|e| format!("resizing the screen to {w}x{h}: {e}"))?,
            Step::Crtc => {
                let reply = conn
                    .randr_set_crtc_config(
                        crtc,
                        CURRENT_TIME,
                        res.config_timestamp,
                        0,
                        0,
                        mode,
                        Rotation::ROTATE0,
                        &[output],
                    )
                    .map_err(err("RandR CRTC config"))?
                    .reply()
                    .map_err(|e| format!("showing {}x{}: {e}", want.0, want.1))?;
                if reply.status != SetConfig::SUCCESS {
                    return Err(format!(
                        "showing {}x{}: the X server answered {:?}",
                        want.0, want.1, reply.status
                    ));
                }
            }
        }
    }
    forget_unused_modes(conn, root, output, mode);
    current_size(conn, root)
}

/// Removes the modes the agent made that are no longer shown (best effort: a mode still in use
/// elsewhere is simply kept).
fn forget_unused_modes(conn: &impl RequestConnection, root: Window, output: u32, keep: u32) {
    let Ok(res) = conn.randr_get_screen_resources_current(root).map(|c| c.reply()) else {
        return;
    };
    let Ok(res) = res else { return };
    for (i, m) in res.modes.iter().enumerate() {
        if m.id == keep || !mode_name(&res, i).ends_with(MODE_SUFFIX.as_bytes()) {
            continue;
        }
        let _ = conn.randr_delete_output_mode(output, m.id).map(|c| c.check());
        let _ = conn.randr_destroy_mode(m.id).map(|c| c.check());
    }
}

fn current_size(conn: &impl RequestConnection, root: Window) -> XResult<Size> {
    use x11rb::protocol::xproto::ConnectionExt as _;
    let g =
        conn.get_geometry(root).map_err(err("screen size"))?.reply().map_err(err("screen size"))?;
    Ok((g.width, g.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_grows_before_the_mode_and_shrinks_after() {
        assert_eq!(steps((1280, 800), (1920, 1080)), vec![Step::Screen((1920, 1080)), Step::Crtc]);
        assert_eq!(steps((1920, 1080), (1024, 768)), vec![Step::Crtc, Step::Screen((1024, 768))]);
        // Wider but shorter: through the larger of both, then down to the new size.
        assert_eq!(
            steps((1280, 800), (1600, 600)),
            vec![Step::Screen((1600, 800)), Step::Crtc, Step::Screen((1600, 600))]
        );
        assert_eq!(steps((1280, 800), (1280, 800)), vec![Step::Crtc]);
    }

    #[test]
    fn mode_timings_are_consistent() {
        for (w, h) in [(320, 320), (1024, 768), (1366, 768), (7680, 4320)] {
            let m = mode_info(w, h, 4);
            assert!(
                m.width < m.hsync_start && m.hsync_start < m.hsync_end && m.hsync_end < m.htotal
            );
            assert!(
                m.height < m.vsync_start && m.vsync_start < m.vsync_end && m.vsync_end < m.vtotal
            );
            assert_eq!(m.dot_clock, u32::from(m.htotal) * u32::from(m.vtotal) * 60);
        }
        assert_eq!(mm(96 * 10), 254);
    }
}
