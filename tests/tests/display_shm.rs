//! The display proxy's shared-memory source against the real builtin VMM (group `kvm`): the VMM
//! runs its test firmware, which draws a known pattern and shows each key it receives as a
//! block; a viewer of `atrium-display serve` sees the pattern, and a key it types comes back on
//! screen through virtio-input.

use std::time::Duration;

use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_protocol::node::DisplayEndpoint;
use atrium_protocol::ticket::Capabilities;
use atrium_tests::display::{DisplayOnlyNode, DisplayProxy, DisplayViewer, keep_artifact};
use atrium_tests::vmm::VmmGuestBuilder;
use atrium_tests::{Group, skip};
use atrium_vmm::firmware::{KEY_UP_RGB, key_block, pattern};

fn pixel(v: &DisplayViewer, x: u32, y: u32) -> u32 {
    let i = usize::try_from((y * u32::from(v.width) + x) * 3).expect("fits");
    u32::from_be_bytes([0, v.rgb[i], v.rgb[i + 1], v.rgb[i + 2]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_the_builtin_vmm_framebuffer_and_types_into_it() -> anyhow::Result<()> {
    if skip(Group::Kvm, "a_viewer_sees_the_builtin_vmm_framebuffer_and_types_into_it") {
        return Ok(());
    }
    let mut vm = VmmGuestBuilder::firmware("display-shm")?.start()?;
    vm.wait_serial("atrium-fw: ready\n", Duration::from_secs(60))?;
    let socket = vm.config.display_socket.clone().expect("the firmware builder sets it");
    let node = DisplayOnlyNode::start(vec![(
        "fw".into(),
        DisplayEndpoint::Shm { path: socket.display().to_string() },
    )])
    .await?;
    let issuer = TicketIssuer::generate("k1");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let proxy = DisplayProxy::start(&jwks.url(), &node.socket, "").await?;
    let mut viewer =
        DisplayViewer::connect(&proxy.ws_url("fw", &issuer.ticket("fw", Capabilities::default())))
            .await?;
    assert_eq!((viewer.width, viewer.height), (640, 480));

    // The pattern, exactly (it is lossless once refined: wait for that).
    let points = [(0, 0), (639, 0), (17, 100), (320, 239), (639, 239)];
    let drawn = viewer
        .wait_until("the firmware's pattern", Duration::from_secs(30), |v| {
            points.iter().all(|&(x, y)| pixel(v, x, y) == pattern(x, y, 640, 480))
        })
        .await;
    keep_artifact("display-shm-pattern.png", &viewer.png());
    drawn.map_err(|e| anyhow::anyhow!("{e}\nproxy log:\n{}", proxy.log()))?;
    assert_eq!(pixel(&viewer, 5, 300), 0, "the bottom half is black");

    // A key typed in the viewer reaches the guest as evdev code 30 and shows as its block.
    viewer.key("KeyA", 0x61).await?;
    vm.wait_serial("input atrium-keyboard type=1 code=30 value=0\n", Duration::from_secs(60))?;
    let (x0, y0) = key_block(30, 640, 480).expect("fits");
    viewer
        .wait_until("the key's block", Duration::from_secs(30), |v| {
            pixel(v, x0 + 15, y0 + 15) == KEY_UP_RGB
        })
        .await?;
    keep_artifact("display-shm-key.png", &viewer.png());
    let (status, log) = vm.stop()?;
    assert!(status.success(), "{status}\n{log}");
    Ok(())
}
