//! Tracepoint formats, as the running kernel describes them in tracefs:
//! where each field of a tracepoint's record sits, and the names its
//! `__print_symbolic` tables give to enum values (`enum sk_rst_reason` is
//! numbered differently from one kernel release to the next).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Why a tracepoint's format could not be had or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("tracefs is not mounted and could not be mounted at /sys/kernel/tracing ({0})")]
    NoTracefs(std::io::Error),
    /// Mounted, but closed to this process: tracefs is root's alone (mode
    /// 0700) unless the administrator opened it, so a run without root (the
    /// systemd unit, `setcap`) ends up here.
    #[error("tracefs at {0} can only be read by root")]
    Unreadable(&'static str),
    #[error("this kernel has no {0} tracepoint")]
    NoTracepoint(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {event} tracepoint has no {field} field of the expected size")]
    MissingField { event: String, field: String },
    #[error("the {event} tracepoint does not name its {field} values")]
    NoNames { event: String, field: String },
}

/// Where tracefs is mounted: `TEARDOWN_TRACEFS` when set (a tracefs
/// mounted elsewhere; the tests point it at an empty directory to stand in
/// for a kernel without the tracepoint), else the usual places, or mounted
/// at the first by us when it is not (as `perf` and `bpftrace` do).
pub fn tracefs_root() -> Result<PathBuf, FormatError> {
    if let Some(root) = std::env::var_os("TEARDOWN_TRACEFS") {
        return Ok(PathBuf::from(root));
    }
    const PLACES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    for place in PLACES {
        match std::fs::metadata(Path::new(place).join("events")) {
            Ok(metadata) if metadata.is_dir() => return Ok(PathBuf::from(place)),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(FormatError::Unreadable(place));
            }
            _ => {}
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let mounted = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(FormatError::NoTracefs(std::io::Error::last_os_error()));
    }
    Ok(PathBuf::from(PLACES[0]))
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// A tracepoint's `format` file, read.
#[derive(Debug, Default)]
pub struct Format {
    pub event: String,
    pub fields: BTreeMap<String, Field>,
    /// The text after `print fmt:`.
    pub print: String,
}

impl Format {
    /// Reads `events/GROUP/NAME/format` under tracefs.
    pub fn read(root: &Path, group: &str, name: &str) -> Result<Format, FormatError> {
        let dir = root.join("events").join(group).join(name);
        if !dir.is_dir() {
            return Err(FormatError::NoTracepoint(format!("{group}:{name}")));
        }
        let path = dir.join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| FormatError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Format::parse(&format!("{group}:{name}"), &text))
    }

    /// Parses the text of a `format` file. Lines it does not understand are
    /// skipped: only the fields asked for later must be there.
    pub fn parse(event: &str, text: &str) -> Format {
        let mut format = Format {
            event: event.to_string(),
            ..Format::default()
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(print) = line.strip_prefix("print fmt:") {
                format.print = print.trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            // "TYPE NAME[N];\toffset:O;\tsize:S;\tsigned:X;"
            let mut parts = rest.split(';').map(str::trim);
            let Some(declaration) = parts.next() else {
                continue;
            };
            let Some(name) = declaration.rsplit(' ').next() else {
                continue;
            };
            let name = name.split('[').next().unwrap_or(name).to_string();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(value) = part.strip_prefix("offset:") {
                    offset = value.parse::<u16>().ok();
                } else if let Some(value) = part.strip_prefix("size:") {
                    size = value.parse::<u16>().ok();
                }
            }
            if let (Some(offset), Some(size)) = (offset, size) {
                format.fields.insert(name, Field { offset, size });
            }
        }
        format
    }

    /// The field `name`, which must be `size` bytes.
    pub fn field(&self, name: &str, size: u16) -> Result<Field, FormatError> {
        match self.fields.get(name) {
            Some(field) if field.size == size => Ok(*field),
            _ => Err(FormatError::MissingField {
                event: self.event.clone(),
                field: name.to_string(),
            }),
        }
    }

    /// The names the print format gives the values of `REC->field`, from
    /// its `__print_symbolic(REC->field, { N, "NAME" }, ...)` table.
    pub fn symbols(&self, field: &str) -> Result<BTreeMap<u32, String>, FormatError> {
        let missing = || FormatError::NoNames {
            event: self.event.clone(),
            field: field.to_string(),
        };
        let opening = format!("__print_symbolic(REC->{field},");
        let start = self.print.find(&opening).ok_or_else(missing)? + opening.len();
        let mut names = BTreeMap::new();
        let mut rest = &self.print[start..];
        // Pairs follow until the table's closing parenthesis.
        loop {
            let trimmed = rest.trim_start_matches([' ', ',']);
            let Some(pair) = trimmed.strip_prefix('{') else {
                break;
            };
            let Some(end) = pair.find('}') else {
                break;
            };
            let (number, name) = pair[..end].split_once(',').ok_or_else(missing)?;
            let number = number.trim();
            let number = match number.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => number.parse::<u32>(),
            };
            if let Ok(number) = number {
                names.insert(number, name.trim().trim_matches('"').to_string());
            }
            rest = &pair[end + 1..];
        }
        if names.is_empty() {
            return Err(missing());
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tcp:tcp_send_reset`'s format on Linux 6.18, the reason table
    /// shortened.
    const SEND_RESET: &str = r#"name: tcp_send_reset
ID: 2280
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;

print fmt: "skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { TCP_SYN_SENT, "TCP_SYN_SENT" }) : "UNKNOWN", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, { 11, "TCP_ABORT_ON_CLOSE" }, { 25, "MAX" })
"#;

    #[test]
    fn fields_are_found_with_offset_and_size() {
        let format = Format::parse("tcp:tcp_send_reset", SEND_RESET);
        assert_eq!(
            format.field("saddr", 28).unwrap(),
            Field {
                offset: 32,
                size: 28
            }
        );
        assert_eq!(format.field("skaddr", 8).unwrap().offset, 16);
        assert_eq!(format.field("reason", 4).unwrap().offset, 28);
        assert_eq!(format.field("common_pid", 4).unwrap().offset, 4);
    }

    #[test]
    fn a_field_of_another_size_or_missing_is_an_error() {
        let format = Format::parse("tcp:tcp_send_reset", SEND_RESET);
        let err = format.field("saddr", 16).unwrap_err().to_string();
        assert_eq!(
            err,
            "the tcp:tcp_send_reset tracepoint has no saddr field of the expected size"
        );
        assert!(format.field("rx_sk", 8).is_err());
    }

    #[test]
    fn reason_names_come_from_the_print_format() {
        let format = Format::parse("tcp:tcp_send_reset", SEND_RESET);
        let names = format.symbols("reason").unwrap();
        assert_eq!(names.get(&1).map(String::as_str), Some("NO_SOCKET"));
        assert_eq!(
            names.get(&11).map(String::as_str),
            Some("TCP_ABORT_ON_CLOSE")
        );
        assert_eq!(names.len(), 4);
        // The state table names its values with macros, not numbers: none.
        assert!(format.symbols("state").is_err());
        assert!(format.symbols("nothing").is_err());
    }

    #[test]
    fn a_format_without_a_reason_table_says_so() {
        let format = Format::parse(
            "tcp:tcp_send_reset",
            "print fmt: \"src=%pISpc\", REC->saddr",
        );
        let err = format.symbols("reason").unwrap_err().to_string();
        assert_eq!(
            err,
            "the tcp:tcp_send_reset tracepoint does not name its reason values"
        );
    }

    #[test]
    fn the_running_kernels_reset_reasons_are_read_when_it_has_them() {
        let Ok(root) = tracefs_root() else {
            return;
        };
        let Ok(format) = Format::read(&root, "tcp", "tcp_send_reset") else {
            return;
        };
        let names = format.symbols("reason").unwrap();
        assert!(names.values().any(|name| name == "NO_SOCKET"), "{names:?}");
        format.field("saddr", 28).unwrap();
    }
}
