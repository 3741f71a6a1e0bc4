//! The numbers the counters page shows, and the three ways of showing them.
//!
//! A [`Snapshot`] is one moment's copy of everything worth watching: per
//! guest its exits by reason, its shadow paging and its device requests;
//! per switch port its packets, bytes and drops; the uplink card; the
//! host's own interface; the machine's memory. The run loop fills one
//! when someone asks (an HTTP request, the console's interval), so no
//! counter is copied for nobody.
//!
//! It renders itself as JSON ([`Snapshot::write_json`], for scripts: `GET
//! /counters`), as a small HTML page ([`Snapshot::write_html`], for people:
//! `GET /`, which reloads itself every few seconds) and as `key=value`
//! lines for the serial console ([`Snapshot::write_text`]). Names come from
//! the command line, so every name is escaped for the format it goes into.
//!
//! Nothing here touches hardware; it only formats.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::{self, Write};
use host::frames::FrameStats;
use host::guest::ExitCounters;
use host::net::{PortCounters, PortStats};
use host::paging::PagingStats;

/// Everything the counters page shows, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Milliseconds since the host booted.
    pub uptime_ms: u64,
    /// The machine's memory.
    pub memory: MemoryLine,
    /// Each running guest.
    pub guests: Vec<GuestLine>,
    /// Each port of the virtual switch.
    pub ports: Vec<PortLine>,
    /// The machine's NIC, if it has one.
    pub uplink: Option<UplinkLine>,
    /// The host's own interface (filled in by [`super::HostNet`]).
    pub host: HostLine,
}

/// The machine's memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryLine {
    /// The frame allocator's counts.
    pub frames: FrameStats,
    /// Live heap allocations.
    pub heap_allocations: usize,
    /// The bytes they hold.
    pub heap_bytes: usize,
    /// The heap's size.
    pub heap_size: u64,
}

/// One guest's counts.
#[derive(Clone, Debug, Default)]
pub struct GuestLine {
    /// Its name (image and argument, as the command line gave them).
    pub name: String,
    /// CPU time it has used, in milliseconds.
    pub cpu_ms: u64,
    /// Its exits by reason.
    pub exits: ExitCounters,
    /// What its shadow page tables did, and the frames they hold.
    pub paging: PagingStats,
    /// Requests its virtio devices served.
    pub device_requests: u64,
}

/// One switch port's counts (an owned copy of [`PortStats`]).
#[derive(Clone, Debug, Default)]
pub struct PortLine {
    /// Its name (a guest's image, `uplink`, `host`).
    pub name: String,
    /// What is plugged in (`guest`, `uplink`, `host`).
    pub kind: &'static str,
    /// Its counts.
    pub counters: PortCounters,
    /// Frames waiting in its queue.
    pub queued_frames: usize,
    /// Their bytes.
    pub queued_bytes: usize,
}

impl From<PortStats<'_>> for PortLine {
    fn from(stats: PortStats<'_>) -> Self {
        Self {
            name: stats.name.to_string(),
            kind: stats.kind.name(),
            counters: stats.counters,
            queued_frames: stats.queued_frames,
            queued_bytes: stats.queued_bytes,
        }
    }
}

impl PortLine {
    /// Every frame this port lost, whatever the reason.
    pub fn drops(&self) -> u64 {
        let c = &self.counters;
        c.drops_full + c.drops_runt + c.drops_oversize + c.drops_flood_rate + c.drops_removed
    }
}

/// The machine's NIC.
#[derive(Clone, Debug, Default)]
pub struct UplinkLine {
    /// Where it sits on PCI (`00:03.0`).
    pub location: String,
    /// What card it is (`virtio-net`, `e1000 (82540EM)`).
    pub model: String,
    /// Its MAC address.
    pub mac: String,
    /// Frames received from the wire.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames sent to the wire.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
}

/// The host's own interface.
#[derive(Clone, Debug, Default)]
pub struct HostLine {
    /// Its MAC address.
    pub mac: String,
    /// Its address and prefix (`10.0.2.15/24`), once it has one.
    pub address: Option<String>,
    /// Its default gateway, if any.
    pub gateway: Option<String>,
    /// HTTP requests answered.
    pub http_requests: u64,
}

/// The named numbers of one guest, in the order every format prints them.
fn guest_fields(guest: &GuestLine) -> [(&'static str, u64); 14] {
    let (e, p) = (&guest.exits, &guest.paging);
    [
        ("cpu_ms", guest.cpu_ms),
        ("exits", e.total()),
        ("hypercalls", e.hypercalls),
        ("page_faults", e.page_faults),
        ("exceptions", e.exceptions),
        ("interrupts", e.interrupts),
        ("faults_fixed", p.faults_fixed),
        ("faults_reflected", p.faults_reflected),
        ("roots_made", p.roots_made),
        ("roots_reused", p.roots_reused),
        ("roots_evicted", p.roots_evicted),
        ("shadow_frames_held", p.frames_held),
        ("device_requests", guest.device_requests),
        ("virtual_interrupts", e.virtual_interrupts),
    ]
}

/// The named numbers of one port.
fn port_fields(port: &PortLine) -> [(&'static str, u64); 13] {
    let c = &port.counters;
    [
        ("rx_packets", c.rx_packets),
        ("rx_bytes", c.rx_bytes),
        ("tx_packets", c.tx_packets),
        ("tx_bytes", c.tx_bytes),
        ("drops", port.drops()),
        ("drops_full", c.drops_full),
        ("drops_runt", c.drops_runt),
        ("drops_oversize", c.drops_oversize),
        ("drops_flood_rate", c.drops_flood_rate),
        ("forwarded", c.forwarded),
        ("floods", c.floods),
        ("queued_frames", port.queued_frames as u64),
        ("queued_bytes", port.queued_bytes as u64),
    ]
}

/// The named numbers of the machine's memory.
fn memory_fields(memory: &MemoryLine) -> [(&'static str, u64); 6] {
    [
        ("frames_usable", memory.frames.usable),
        ("frames_free", memory.frames.free),
        ("frames_used", memory.frames.used()),
        ("heap_size", memory.heap_size),
        ("heap_bytes", memory.heap_bytes as u64),
        ("heap_allocations", memory.heap_allocations as u64),
    ]
}

/// The named numbers of the uplink.
fn uplink_fields(uplink: &UplinkLine) -> [(&'static str, u64); 4] {
    [
        ("rx_packets", uplink.rx_packets),
        ("rx_bytes", uplink.rx_bytes),
        ("tx_packets", uplink.tx_packets),
        ("tx_bytes", uplink.tx_bytes),
    ]
}

impl Snapshot {
    /// The snapshot as one JSON object (see the module docs for its
    /// shape; every count is a whole number, every name a string).
    pub fn write_json(&self, out: &mut impl Write) -> fmt::Result {
        write!(out, "{{\"uptime_ms\":{},\"memory\":", self.uptime_ms)?;
        json_object(out, &[], &memory_fields(&self.memory))?;
        out.write_str(",\"host\":{\"mac\":")?;
        json_string(out, &self.host.mac)?;
        out.write_str(",\"address\":")?;
        json_optional_string(out, self.host.address.as_deref())?;
        out.write_str(",\"gateway\":")?;
        json_optional_string(out, self.host.gateway.as_deref())?;
        write!(out, ",\"http_requests\":{}}}", self.host.http_requests)?;
        out.write_str(",\"uplink\":")?;
        match &self.uplink {
            Some(uplink) => json_object(
                out,
                &[
                    ("location", &uplink.location),
                    ("model", &uplink.model),
                    ("mac", &uplink.mac),
                ],
                &uplink_fields(uplink),
            )?,
            None => out.write_str("null")?,
        }
        out.write_str(",\"guests\":[")?;
        for (i, guest) in self.guests.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            json_object(out, &[("name", &guest.name)], &guest_fields(guest))?;
        }
        out.write_str("],\"ports\":[")?;
        for (i, port) in self.ports.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            json_object(
                out,
                &[("name", &port.name), ("kind", port.kind)],
                &port_fields(port),
            )?;
        }
        out.write_str("]}")
    }

    /// The snapshot as a small HTML page that reloads itself every
    /// `refresh_s` seconds.
    pub fn write_html(&self, out: &mut impl Write, refresh_s: u32) -> fmt::Result {
        write!(
            out,
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"{refresh_s}\">\
             <title>rguest counters</title><style>\
             body{{font-family:sans-serif}}table{{border-collapse:collapse;margin-bottom:1em}}\
             td,th{{border:1px solid #999;padding:2px 6px;text-align:right}}\
             th:first-child,td:first-child{{text-align:left}}</style></head><body>\n\
             <h1>rguest</h1><p>up {} s; the same numbers as JSON: \
             <a href=\"/counters\">/counters</a></p>\n",
            self.uptime_ms / 1000
        )?;
        out.write_str("<h2>Guests</h2>\n")?;
        let guest_rows = self
            .guests
            .iter()
            .map(|g| (g.name.as_str(), guest_fields(g)));
        html_table(out, guest_rows)?;
        out.write_str("<h2>Switch ports</h2>\n")?;
        let port_rows = self.ports.iter().map(|p| (p.name.as_str(), port_fields(p)));
        html_table(out, port_rows)?;
        out.write_str("<h2>Uplink and host interface</h2>\n<p>")?;
        match &self.uplink {
            Some(uplink) => {
                out.write_str("NIC ")?;
                html_text(out, &uplink.model)?;
                out.write_str(" at ")?;
                html_text(out, &uplink.location)?;
                out.write_str(" mac ")?;
                html_text(out, &uplink.mac)?;
                for (name, value) in uplink_fields(uplink) {
                    write!(out, "; {name} {value}")?;
                }
            }
            None => out.write_str("no NIC")?,
        }
        out.write_str("<br>host interface mac ")?;
        html_text(out, &self.host.mac)?;
        out.write_str(" address ")?;
        html_text(out, self.host.address.as_deref().unwrap_or("none yet"))?;
        out.write_str(" gateway ")?;
        html_text(out, self.host.gateway.as_deref().unwrap_or("none"))?;
        write!(
            out,
            "; {} HTTP requests</p>\n<h2>Memory</h2>\n",
            self.host.http_requests
        )?;
        html_table(out, core::iter::once(("host", memory_fields(&self.memory))))?;
        out.write_str("</body></html>\n")
    }

    /// The snapshot as `key=value` lines for the serial console, each
    /// starting with `stats`.
    pub fn write_text(&self, out: &mut impl Write) -> fmt::Result {
        write!(out, "stats uptime_ms={}", self.uptime_ms)?;
        text_fields(out, &memory_fields(&self.memory))?;
        for guest in &self.guests {
            write!(out, "stats guest {}", guest.name)?;
            text_fields(out, &guest_fields(guest))?;
        }
        for port in &self.ports {
            write!(out, "stats port {} kind={}", port.name, port.kind)?;
            text_fields(out, &port_fields(port))?;
        }
        if let Some(uplink) = &self.uplink {
            write!(out, "stats uplink {} mac={}", uplink.location, uplink.mac)?;
            text_fields(out, &uplink_fields(uplink))?;
        }
        writeln!(
            out,
            "stats host mac={} address={} gateway={} http_requests={}",
            self.host.mac,
            self.host.address.as_deref().unwrap_or("none"),
            self.host.gateway.as_deref().unwrap_or("none"),
            self.host.http_requests
        )
    }
}

/// ` key=value` for each field, then the end of the line.
fn text_fields(out: &mut impl Write, fields: &[(&str, u64)]) -> fmt::Result {
    for (name, value) in fields {
        write!(out, " {name}={value}")?;
    }
    out.write_char('\n')
}

/// `{"name":"value",...,"count":1,...}`.
fn json_object(
    out: &mut impl Write,
    strings: &[(&str, &str)],
    counts: &[(&str, u64)],
) -> fmt::Result {
    out.write_char('{')?;
    let mut first = true;
    for (name, value) in strings {
        if !first {
            out.write_char(',')?;
        }
        first = false;
        write!(out, "\"{name}\":")?;
        json_string(out, value)?;
    }
    for (name, value) in counts {
        if !first {
            out.write_char(',')?;
        }
        first = false;
        write!(out, "\"{name}\":{value}")?;
    }
    out.write_char('}')
}

fn json_optional_string(out: &mut impl Write, value: Option<&str>) -> fmt::Result {
    match value {
        Some(value) => json_string(out, value),
        None => out.write_str("null"),
    }
}

/// `value` as a JSON string: quoted, with quotes, backslashes and control
/// characters escaped (RFC 8259, section 7). Other characters, non-ASCII
/// included, pass as they are: the body is UTF-8.
pub fn json_string(out: &mut impl Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\u{:04x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// `text` with the five characters HTML gives a meaning escaped.
pub fn html_text(out: &mut impl Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '&' => out.write_str("&amp;")?,
            '<' => out.write_str("&lt;")?,
            '>' => out.write_str("&gt;")?,
            '"' => out.write_str("&quot;")?,
            '\'' => out.write_str("&#39;")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// A table with one row per `(name, fields)`, the field names as header.
fn html_table<'a, const N: usize>(
    out: &mut impl Write,
    rows: impl Iterator<Item = (&'a str, [(&'static str, u64); N])>,
) -> fmt::Result {
    let mut rows = rows.peekable();
    let Some((_, first)) = rows.peek() else {
        return out.write_str("<p>none</p>\n");
    };
    out.write_str("<table><tr><th>name</th>")?;
    for (name, _) in first {
        write!(out, "<th>{}</th>", name.replace('_', " "))?;
    }
    out.write_str("</tr>\n")?;
    for (name, fields) in rows {
        out.write_str("<tr><td>")?;
        html_text(out, name)?;
        out.write_str("</td>")?;
        for (_, value) in fields {
            write!(out, "<td>{value}</td>")?;
        }
        out.write_str("</tr>\n")?;
    }
    out.write_str("</table>\n")
}
