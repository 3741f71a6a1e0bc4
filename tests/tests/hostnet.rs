//! The host's own network: the machine's NIC (the uplink of the virtual
//! switch: virtio-net, and in one boot an Intel e1000), the host's
//! interface on that switch, and the counters it serves over HTTP.
//!
//! The machines here have a NIC on QEMU's user network ([`with_nic`]),
//! whose DHCP server hands out 10.0.2.15 and whose port forwarding takes a
//! free port of this machine's loopback to the host's port 80. Each test
//! starts its machine, waits for the host's `hostnet:` line saying it has
//! an address, fetches pages over the forwarded port with a plain
//! [`std::net::TcpStream`] while the machine runs, and then judges the
//! whole boot. Most boot `test=net` (the kernel's `hostnet::selftest`:
//! NIC and interface up, pages served until no request has come for 3 s,
//! then a clean end); one boots guests and looks at the counters
//! while they run.
//!
//! Time limits are wide and nothing is timed: these are TCG machines of
//! any speed, two at a time.

use qemu_tests::{
    Boot, HttpAnswer, NicModel, Running, boot, http_exchange, http_get, start_machine, with_nic,
    with_nic_and_guest, with_nic_model,
};
use serde_json::Value;
use std::time::Duration;

/// How long a `test=net` machine may run: DHCP, the requests, then 3 s of
/// quiet. The kernel itself gives up after 60 s without a request.
const TIME_LIMIT: Duration = Duration::from_secs(180);
/// How long the host may take to have an address after QEMU's start.
const ADDRESS_LIMIT: Duration = Duration::from_secs(90);
/// How long one page may take to come (QEMU's user network may accept a
/// connection before the host's side is ready: it is tried again).
const FETCH_LIMIT: Duration = Duration::from_secs(60);

/// QEMU's user network: the address its DHCP server hands out, its
/// gateway, and the MAC QEMU gives the first NIC.
const DHCP_ADDRESS: &str = "10.0.2.15/24";
const GATEWAY: &str = "10.0.2.2";
const NIC_MAC: &str = "52:54:00:12:34:56";
/// The host interface's own MAC (`hostnet::HOST_MAC`).
const HOST_MAC: &str = "02:72:67:00:00:00";

/// `GET path` on the machine's forwarded port; fails the test (with the
/// machine's transcript) when no answer comes.
#[track_caller]
fn fetch(machine: &mut Running, path: &str) -> HttpAnswer {
    match http_get(machine.forwarded_port(), path, FETCH_LIMIT) {
        Ok(answer) => answer,
        Err(e) => machine.fail(&e),
    }
}

/// Sends `request` as it is and reads the answer, however malformed the
/// request; fails the test when no HTTP answer comes.
#[track_caller]
fn send_raw(machine: &mut Running, request: &[u8]) -> HttpAnswer {
    let answer = http_exchange(machine.forwarded_port(), request);
    match answer.as_deref().map(HttpAnswer::parse) {
        Ok(Some(answer)) => answer,
        other => machine.fail(&format!("no HTTP answer to {request:?}: {other:?}")),
    }
}

/// The JSON of a `/counters` answer, checked to be one.
#[track_caller]
fn counters_of(machine: &mut Running, answer: &HttpAnswer) -> Value {
    if answer.status != 200 || answer.header("Content-Type") != Some("application/json") {
        machine.fail(&format!("/counters answered:\n{}", answer.head));
    }
    serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| machine.fail(&format!("/counters is not JSON ({e}):\n{}", answer.body)))
}

/// The number at `pointer` (`/host/http_requests`) of `json`.
#[track_caller]
fn number(json: &Value, pointer: &str) -> u64 {
    json.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {json}"))
}

/// The string at `pointer` of `json`.
#[track_caller]
fn text<'a>(json: &'a Value, pointer: &str) -> &'a str {
    json.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {json}"))
}

/// `(name, kind)` of every switch port the counters list.
fn ports(counters: &Value) -> Vec<(String, String)> {
    counters["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| (port["name"].to_string(), port["kind"].to_string()))
        .map(|(name, kind)| (name.trim_matches('"').into(), kind.trim_matches('"').into()))
        .collect()
}

/// The uplink's and the host's ports, and nothing else: a `test=net` switch.
fn expect_uplink_and_host_ports(counters: &Value) {
    let expected = [("uplink", "uplink"), ("host", "host")].map(|(n, k)| (n.into(), k.into()));
    assert_eq!(ports(counters), expected, "ports of {counters}");
}

/// What the host says of itself and its NIC on QEMU's user network.
fn expect_host_and_uplink(counters: &Value) {
    assert_eq!(text(counters, "/host/mac"), HOST_MAC, "{counters}");
    assert_eq!(text(counters, "/host/address"), DHCP_ADDRESS, "{counters}");
    assert_eq!(text(counters, "/host/gateway"), GATEWAY, "{counters}");
    assert_eq!(text(counters, "/uplink/mac"), NIC_MAC, "{counters}");
    assert!(
        text(counters, "/uplink/location").starts_with("00:"),
        "{counters}"
    );
    assert!(number(counters, "/memory/frames_usable") > 0, "{counters}");
}

/// The whole way: the card found, an address by DHCP from QEMU's user
/// network, the counters as JSON and as a page, errors for the rest, the
/// numbers moving between two fetches, and the same numbers on the console
/// at the end.
#[test]
fn hostnet_by_dhcp_serves_the_counters_over_http() {
    let mut machine = start_machine("test=net", TIME_LIMIT, with_nic);
    let address = machine.wait_for_line(&["hostnet: address ", " by DHCP"], ADDRESS_LIMIT);
    if !address.contains(&format!("address {DHCP_ADDRESS} by DHCP")) || !address.contains(GATEWAY) {
        machine.fail(&format!(
            "expected {DHCP_ADDRESS} and gateway {GATEWAY}: {address}"
        ));
    }
    let first = fetch(&mut machine, "/counters");
    let page = fetch(&mut machine, "/");
    let missing = fetch(&mut machine, "/no-such-page");
    let garbage = send_raw(&mut machine, b"\x00\x01\xff garbage \r\n\r\n");
    let post = send_raw(
        &mut machine,
        b"POST /counters HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
    );
    let second = fetch(&mut machine, "/counters");
    let (first, second) = (
        counters_of(&mut machine, &first),
        counters_of(&mut machine, &second),
    );
    let boot = machine.finish();
    boot.expect_success();
    boot.line_containing(&["nic: virtio-net at ", &format!(" mac {NIC_MAC}")]);
    assert_eq!(text(&first, "/uplink/model"), "virtio-net", "{first}");

    for counters in [&first, &second] {
        expect_host_and_uplink(counters);
        expect_uplink_and_host_ports(counters);
        assert_eq!(counters["guests"], Value::Array(Vec::new()), "{counters}");
    }
    // The host counts its answers after making them: the second fetch has
    // seen the first and the four between.
    let requests = |c: &Value| number(c, "/host/http_requests");
    assert_eq!(requests(&second), requests(&first) + 5, "{first}\n{second}");
    assert!(number(&second, "/uplink/rx_packets") > number(&first, "/uplink/rx_packets"));
    assert!(number(&second, "/ports/1/tx_packets") > number(&first, "/ports/1/tx_packets"));

    assert_eq!(page.status, 200, "{}", page.head);
    assert!(
        page.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    for needle in [
        "<meta http-equiv=\"refresh\"",
        "<td>uplink</td>",
        "<td>host</td>",
    ] {
        assert!(
            page.body.contains(needle),
            "`{needle}` missing from:\n{}",
            page.body
        );
    }
    assert_eq!(missing.status, 404, "{}", missing.head);
    assert_eq!(garbage.status, 400, "{}", garbage.head);
    assert_eq!(post.status, 405, "{}", post.head);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"), "{}", post.head);

    let answered = requests(&second) + 1;
    boot.line_containing(&[
        &format!("stats host mac={HOST_MAC} address={DHCP_ADDRESS} gateway={GATEWAY}"),
        &format!("http_requests={answered}"),
    ]);
    boot.line_containing(&["stats port uplink kind=uplink rx_packets="]);
    boot.line_containing(&[&format!("net: answered {answered} HTTP requests"), ": ok"]);
}

/// `host_ip=` and `host_gateway=` instead of DHCP.
#[test]
fn hostnet_with_a_static_address_serves_too() {
    let cmdline = "test=net host_ip=10.0.2.15/24 host_gateway=10.0.2.2";
    let mut machine = start_machine(cmdline, TIME_LIMIT, with_nic);
    machine.wait_for_line(
        &[&format!(
            "hostnet: interface {HOST_MAC}, address {DHCP_ADDRESS}"
        )],
        ADDRESS_LIMIT,
    );
    let answer = fetch(&mut machine, "/counters");
    let counters = counters_of(&mut machine, &answer);
    let boot = machine.finish();
    boot.expect_success();
    if boot.serial().contains("by DHCP") {
        boot.fail("a static address must not ask DHCP");
    }
    expect_host_and_uplink(&counters);
    expect_uplink_and_host_ports(&counters);
    boot.line_containing(&["net: answered 1 HTTP requests", ": ok"]);
}

/// A normal boot with guests and the NIC: the counters page serves while
/// the guests run, and lists them and their switch ports beside the
/// uplink's and the host's. `net-server-std` waits for a client that never
/// comes (nothing outside can reach the guests' subnet), so the guests run
/// for as long as the test looks; then the test ends the machine itself.
#[test]
fn hostnet_counters_list_the_running_guests_and_their_switch_ports() {
    let cmdline = "guest_mem=64 guests=hello,net-server-std";
    let mut machine = start_machine(cmdline, TIME_LIMIT, with_nic);
    machine.wait_for_line(&["hostnet: address ", " by DHCP"], ADDRESS_LIMIT);
    machine.wait_for_line(&["[net-server-std]", "listening on"], ADDRESS_LIMIT);
    let answer = fetch(&mut machine, "/counters");
    let first = counters_of(&mut machine, &answer);
    let answer = fetch(&mut machine, "/counters");
    let second = counters_of(&mut machine, &answer);
    let page = fetch(&mut machine, "/");
    machine.wait_for_line(&["guest hello exited code=0"], ADDRESS_LIMIT);
    let boot = machine.stop();
    for bad in ["EXCEPTION", "panicked", "net-server-std: FAILED"] {
        if boot.serial().contains(bad) {
            boot.fail(&format!("`{bad}` while the guests ran"));
        }
    }

    for counters in [&first, &second] {
        expect_host_and_uplink(counters);
        let server = counters["guests"]
            .as_array()
            .and_then(|guests| guests.iter().find(|g| g["name"] == "net-server-std"))
            .unwrap_or_else(|| panic!("net-server-std is not among the guests: {counters}"));
        assert!(number(server, "/exits") > 0, "{server}");
        let ports = ports(counters);
        for (name, kind) in [
            ("uplink", "uplink"),
            ("host", "host"),
            ("net-server-std", "guest"),
        ] {
            assert!(
                ports.contains(&(name.into(), kind.into())),
                "no {kind} port {name} in {ports:?}"
            );
        }
    }
    assert!(number(&second, "/host/http_requests") > number(&first, "/host/http_requests"));
    assert!(
        page.body.contains("<td>net-server-std</td>"),
        "{}",
        page.body
    );
}

/// A guest serving on the network, reached from this machine: the std
/// program `net-server-std` takes an address of QEMU's user network for
/// itself (`RGUEST_IP=`), the host's switch bridges it onto the NIC, and
/// QEMU forwards a port of this machine's loopback to it. Its HTTP answer
/// comes back through the switch and the uplink, body and all.
#[test]
fn hostnet_a_guests_server_is_reached_from_outside() {
    const GUEST_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 20);
    const GUEST_PORT: u16 = 7000;
    let cmdline = "guest_mem=64 \
        guests=\"net-server-std/RGUEST_IP=10.0.2.20/24 RGUEST_GATEWAY=10.0.2.2,hello\"";
    let machine = start_machine(
        cmdline,
        TIME_LIMIT,
        with_nic_and_guest(GUEST_ADDRESS, GUEST_PORT),
    );
    let (_, page) = fetch_the_guests_page_and_stop(machine);
    assert!(
        page.body.contains("net-server-std on rguest"),
        "the guest's page: {}",
        page.body
    );
}

/// The guest server's page, fetched from here once `net-server-std` is up
/// at 10.0.2.20 and listening; then, with `hello` ended, the machine is
/// stopped, and must have shown no exception, panic or failure.
fn fetch_the_guests_page_and_stop(mut machine: Running) -> (Boot, HttpAnswer) {
    machine.wait_for_line(
        &["hermit: net: up, 10.0.2.20/24 via 10.0.2.2"],
        ADDRESS_LIMIT,
    );
    machine.wait_for_line(&["net-server-std", "listening on"], ADDRESS_LIMIT);
    let page = match http_get(machine.guest_port(), "/", FETCH_LIMIT) {
        Ok(answer) => answer,
        Err(e) => machine.fail(&e),
    };
    machine.wait_for_line(&["net-server-std: answered a GET from"], ADDRESS_LIMIT);
    machine.wait_for_line(&["guest hello exited code=0"], ADDRESS_LIMIT);
    let boot = machine.stop();
    for bad in ["EXCEPTION", "panicked", "net-server-std: FAILED"] {
        if boot.serial().contains(bad) {
            boot.fail(&format!("`{bad}` while the guest served"));
        }
    }
    (boot, page)
}

/// The same ways in with an Intel e1000 (QEMU's 82540EM) as the uplink
/// instead of virtio-net, in one boot: the card found and named, the
/// host's address by DHCP through it, the counters fetched from here
/// (naming the card), and a guest's server reached from here through it.
#[test]
fn hostnet_with_an_e1000_uplink_serves_the_counters_and_a_guests_server() {
    const GUEST_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 20);
    const GUEST_PORT: u16 = 7000;
    let cmdline = "guest_mem=64 \
        guests=\"net-server-std/RGUEST_IP=10.0.2.20/24 RGUEST_GATEWAY=10.0.2.2,hello\"";
    let mut machine = start_machine(
        cmdline,
        TIME_LIMIT,
        with_nic_model(
            NicModel::E1000,
            with_nic_and_guest(GUEST_ADDRESS, GUEST_PORT),
        ),
    );
    let address = machine.wait_for_line(&["hostnet: address ", " by DHCP"], ADDRESS_LIMIT);
    if !address.contains(&format!("address {DHCP_ADDRESS} by DHCP")) {
        machine.fail(&format!("expected {DHCP_ADDRESS}: {address}"));
    }
    let answer = fetch(&mut machine, "/counters");
    let counters = counters_of(&mut machine, &answer);
    let (boot, page) = fetch_the_guests_page_and_stop(machine);
    boot.line_containing(&[
        "nic: e1000 (82540EM) at ",
        &format!(" mac {NIC_MAC} (link up"),
    ]);
    expect_host_and_uplink(&counters);
    assert_eq!(text(&counters, "/uplink/model"), "e1000 (82540EM)");
    assert!(number(&counters, "/uplink/rx_packets") > 0, "{counters}");
    assert!(number(&counters, "/uplink/tx_packets") > 0, "{counters}");
    assert!(
        page.body.contains("net-server-std on rguest"),
        "the guest's page: {}",
        page.body
    );
}

/// A machine without a NIC (the harness's default machine has none): the
/// host says so, and is fine.
#[test]
fn hostnet_without_a_nic_says_so_and_goes_on() {
    let boot: Boot = boot("test=net");
    boot.expect_success();
    boot.line_starting("nic: none found; guests run without an uplink");
    boot.line_containing(&["net: no uplink, nothing to serve: ok"]);
}
