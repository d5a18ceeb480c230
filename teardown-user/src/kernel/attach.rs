//! Attaching the programs: on ingress XDP in the mode asked for (or TC),
//! TC on egress, and detaching them (dropping the [`Kernel`] detaches them
//! too).

use anyhow::Context as _;
use aya::programs::{TcAttachType, XdpMode};
use teardown_common::names;

use super::{Kernel, SetupError, is_permission_error, os_error_of};

/// How to attach the ingress program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP if the interface supports it (but on a veth,
    /// where it turns the peer's TSO off), TC ingress otherwise, and on an
    /// interface without Ethernet headers ([`LinkLayer::Ip`]).
    Auto,
    /// Native XDP, in the driver: fastest; fails if the driver lacks it.
    Native,
    /// Generic XDP, in the kernel's network stack: works everywhere, slower.
    Skb,
    /// TC ingress (TCX): the same work on the kernel's packet, no copy;
    /// like generic XDP, after GRO.
    Tc,
}

/// The index of interface `iface` in this network namespace; an error
/// if there is none.
pub fn interface_index(iface: &str) -> Result<u32, SetupError> {
    let unknown = || SetupError::UnknownInterface(iface.to_string());
    let c_iface = std::ffi::CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_iface.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

impl Kernel {
    /// Attaches the TC egress program to `iface` (TCX), so the host's own
    /// segments reach the flow table. Lasts as long as this `Kernel`.
    pub fn attach_egress(&mut self, iface: &str) -> anyhow::Result<()> {
        match self.egress()?.attach(iface, TcAttachType::Egress) {
            Ok(link) => {
                self.egress_link = Some(link);
                Ok(())
            }
            Err(err) if is_permission_error(&err) => {
                Err(SetupError::Permission("attaching the TC egress program").into())
            }
            Err(err) => Err(err).with_context(|| {
                format!("attaching the TC egress program to {iface} (use --direction ingress to watch ingress only)")
            }),
        }
    }

    /// Attaches the TC ingress program to `iface` (TCX), in XDP's place.
    fn attach_ingress(&mut self, iface: &str) -> anyhow::Result<&'static str> {
        match self
            .classifier(names::TC_INGRESS_PROGRAM)?
            .attach(iface, TcAttachType::Ingress)
        {
            Ok(link) => {
                self.ingress_link = Some(link);
                Ok("TC ingress")
            }
            Err(err) if is_permission_error(&err) => {
                Err(SetupError::Permission("attaching the TC ingress program").into())
            }
            Err(err) => Err(err).with_context(|| {
                format!(
                    "attaching the TC ingress program to {iface} (use --mode skb for generic XDP)"
                )
            }),
        }
    }

    /// Attaches the counting program to `iface`; returns how it runs
    /// ("native XDP", "generic XDP", "TC ingress"). The attachment lasts
    /// as long as this `Kernel`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<&'static str> {
        interface_index(iface)?;
        if self.ip_link {
            // Packets that start with their IP header are read at TC,
            // where the programs were loaded to read them so: an XDP
            // program reads from an Ethernet header.
            return match mode {
                AttachMode::Auto | AttachMode::Tc => self.attach_ingress(iface),
                AttachMode::Native | AttachMode::Skb => Err(SetupError::IpLinkNeedsTc {
                    iface: iface.to_string(),
                    mode: if mode == AttachMode::Native {
                        "native"
                    } else {
                        "skb"
                    },
                }
                .into()),
            };
        }
        match mode {
            // Native XDP runs in the driver, before the kernel builds its
            // packet: nothing is cheaper where the driver has it. A veth
            // is the exception: native XDP there costs the sender its
            // segmentation offloads (the veth driver turns the peer's
            // TSO/GSO off for any native XDP program, multi-buffer or not:
            // veth_fix_features, Linux 6.18), so bulk TCP into the host
            // falls to about 0.4x of no program. Without native XDP, TC
            // ingress: generic XDP copies each multi-page packet (a TSO
            // segment) into pages of its own for the program
            // (skb_cow_data_for_xdp), about 0.85x of no program even for
            // an empty one on a veth, where TC reads the packet where it
            // lies, about 0.98x (docs/performance.md). Containers sit
            // behind veths.
            AttachMode::Auto if driver_of(iface).as_deref() == Some("veth") => {
                self.attach_ingress(iface)
            }
            AttachMode::Auto => match self.attach_xdp(iface, XdpMode::Driver) {
                Err(err)
                    if matches!(
                        err.downcast_ref::<SetupError>(),
                        Some(SetupError::ModeUnsupported { .. })
                    ) =>
                {
                    self.attach_ingress(iface)
                }
                attached => attached,
            },
            AttachMode::Tc => self.attach_ingress(iface),
            AttachMode::Native => self.attach_xdp(iface, XdpMode::Driver),
            AttachMode::Skb => self.attach_xdp(iface, XdpMode::Skb),
        }
    }

    /// Attaches the XDP program to `iface` in `xdp_mode`.
    fn attach_xdp(&mut self, iface: &str, xdp_mode: XdpMode) -> anyhow::Result<&'static str> {
        let label = if xdp_mode == XdpMode::Driver {
            "native XDP"
        } else {
            "generic XDP"
        };
        let program = self.xdp(names::XDP_PROGRAM)?;
        match program.attach(iface, xdp_mode) {
            Ok(link) => {
                self.xdp_link = Some(link);
                Ok(label)
            }
            Err(err) => match os_error_of(&err) {
                // Something is attached already, in this mode or the other.
                Some(libc::EBUSY) | Some(libc::EEXIST) => {
                    Err(SetupError::AlreadyAttached(iface.to_string()).into())
                }
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    Err(SetupError::Permission("attaching XDP").into())
                }
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if xdp_mode == XdpMode::Driver => {
                    Err(SetupError::ModeUnsupported {
                        iface: iface.to_string(),
                        mode: "native",
                    }
                    .into())
                }
                _ => Err(err).with_context(|| format!("attaching {label} to {iface}")),
            },
        }
    }

    /// Detaches the programs from the interface, keeping the maps: after it
    /// nothing more is counted, so figures read next are final.
    pub fn detach(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.xdp_link.take() {
            self.xdp(names::XDP_PROGRAM)?
                .detach(link)
                .context("detaching the XDP program")?;
        }
        if let Some(link) = self.ingress_link.take() {
            self.classifier(names::TC_INGRESS_PROGRAM)?
                .detach(link)
                .context("detaching the TC ingress program")?;
        }
        if let Some(link) = self.egress_link.take() {
            self.egress()?
                .detach(link)
                .context("detaching the TC egress program")?;
        }
        Ok(())
    }
}

/// What an interface's packets start with, for the programs reading them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header (Ethernet, veth, bridge, bond, VXLAN, loopback).
    Ethernet,
    /// The IP header, nothing before it: a tun or WireGuard device
    /// (`ARPHRD_NONE`) or a raw-IP one (`ARPHRD_RAWIP`, e.g. a modem's).
    /// Read at TC only ([`LoadOptions::ip_link`](super::LoadOptions)).
    Ip,
}

/// What `iface`'s packets start with, by its hardware type
/// (`/sys/class/net/IFACE/type`, asked through SIOCGIFHWADDR, which
/// answers for this process's network namespace). An interface of any
/// other type (IP-in-IP, GRE without Ethernet, PPP, InfiniBand, ...) is
/// refused in one line: its packets would be read as Ethernet frames
/// they are not, every one counted as malformed or not IP and no
/// connection seen.
pub fn link_layer_of(iface: &str) -> Result<LinkLayer, SetupError> {
    let unknown = || SetupError::UnknownInterface(iface.to_string());
    if iface.len() >= libc::IFNAMSIZ {
        return Err(unknown());
    }
    // SAFETY: all-zero is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(unknown());
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes the address into
    // the request, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut request) };
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(unknown());
    }
    // SAFETY: SIOCGIFHWADDR answered in the address member.
    let hardware_type = unsafe { request.ifr_ifru.ifru_hwaddr.sa_family };
    link_layer_of_type(iface, hardware_type)
}

/// [`link_layer_of`] for an interface of `hardware_type` (`ARPHRD_*`).
fn link_layer_of_type(iface: &str, hardware_type: u16) -> Result<LinkLayer, SetupError> {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_RAWIP: u16 = 519;
    const ARPHRD_LOOPBACK: u16 = 772;
    const ARPHRD_NONE: u16 = 0xfffe;
    match hardware_type {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => Ok(LinkLayer::Ethernet),
        ARPHRD_NONE | ARPHRD_RAWIP => Ok(LinkLayer::Ip),
        other => Err(SetupError::UnsupportedLink {
            iface: iface.to_string(),
            hardware_type: other,
        }),
    }
}

/// The driver behind `iface` (`ethtool -i`'s `driver`, through the
/// SIOCETHTOOL ioctl's ETHTOOL_GDRVINFO), or None if it cannot be asked.
pub fn driver_of(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _rest: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    if iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is valid for these plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut info).cast(),
        _rest: [0; 16],
    };
    request.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL reads the request and writes `info`, which
    // outlives the call and is as large as the command says.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut request) };
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::{LinkLayer, link_layer_of, link_layer_of_type};

    #[test]
    fn loopback_reads_as_ethernet() {
        // `lo`'s frames carry a zeroed Ethernet header (ARPHRD_LOOPBACK).
        assert_eq!(link_layer_of("lo").ok(), Some(LinkLayer::Ethernet));
    }

    #[test]
    fn hardware_types_map_to_how_packets_start() {
        for (hardware_type, layer) in [
            (1, Some(LinkLayer::Ethernet)),
            (772, Some(LinkLayer::Ethernet)),
            // tun and WireGuard; a raw-IP modem.
            (0xfffe, Some(LinkLayer::Ip)),
            (519, Some(LinkLayer::Ip)),
            // IP-in-IP, SIT, GRE, PPP, InfiniBand, CAN: refused.
            (768, None),
            (776, None),
            (778, None),
            (512, None),
            (32, None),
            (280, None),
        ] {
            assert_eq!(
                link_layer_of_type("x0", hardware_type).ok(),
                layer,
                "{hardware_type}"
            );
        }
        assert_eq!(
            link_layer_of_type("gre1", 778).unwrap_err().to_string(),
            "interface gre1 is neither Ethernet nor a bare-IP device (hardware type 778 in /usr/include/linux/if_arp.h), and teardown cannot read its packets: watch the Ethernet interface its traffic crosses instead"
        );
    }

    #[test]
    fn loopback_has_no_veth_driver() {
        // `lo` answers GDRVINFO with an empty driver or not at all; never veth.
        assert_ne!(super::driver_of("lo").as_deref(), Some("veth"));
        assert_eq!(super::driver_of("an-interface-name-too-long"), None);
    }
}
