//! Attaching the programs: XDP on ingress in the mode asked for, TC on
//! egress, and detaching both (dropping the [`Kernel`] detaches them too).

use anyhow::Context as _;
use aya::programs::{TcAttachType, XdpMode};
use teardown_common::names;

use super::{Kernel, SetupError, is_permission_error, os_error_of};

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP if the interface supports it, generic otherwise.
    Auto,
    /// Native XDP, in the driver: fastest; fails if the driver lacks it.
    Native,
    /// Generic XDP, in the kernel's network stack: works everywhere, slower.
    Skb,
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

    /// Attaches the counting program to `iface`; returns the mode it runs in.
    /// The attachment lasts as long as this `Kernel`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<&'static str> {
        let c_iface = std::ffi::CString::new(iface)
            .map_err(|_| SetupError::UnknownInterface(iface.to_string()))?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        if unsafe { libc::if_nametoindex(c_iface.as_ptr()) } == 0 {
            return Err(SetupError::UnknownInterface(iface.to_string()).into());
        }
        let program = self.xdp(names::XDP_PROGRAM)?;
        let attempts: &[(XdpMode, &'static str)] = match mode {
            AttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
            AttachMode::Native => &[(XdpMode::Driver, "native")],
            AttachMode::Skb => &[(XdpMode::Skb, "generic")],
        };
        let mut last_error = None;
        for &(xdp_mode, label) in attempts {
            match program.attach(iface, xdp_mode) {
                Ok(link) => {
                    self.xdp_link = Some(link);
                    return Ok(label);
                }
                Err(err) => match os_error_of(&err) {
                    // Something is attached already, in this mode or the other.
                    Some(libc::EBUSY) | Some(libc::EEXIST) => {
                        return Err(SetupError::AlreadyAttached(iface.to_string()).into());
                    }
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        return Err(SetupError::Permission("attaching XDP").into());
                    }
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if xdp_mode == XdpMode::Driver => {
                        last_error = Some(SetupError::ModeUnsupported {
                            iface: iface.to_string(),
                            mode: "native",
                        });
                    }
                    _ => {
                        return Err(err)
                            .with_context(|| format!("attaching XDP ({label}) to {iface}"));
                    }
                },
            }
        }
        Err(last_error
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("attaching XDP to {iface} failed")))
    }

    /// Detaches the programs from the interface, keeping the maps: after it
    /// nothing more is counted, so figures read next are final.
    pub fn detach(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.xdp_link.take() {
            self.xdp(names::XDP_PROGRAM)?
                .detach(link)
                .context("detaching the XDP program")?;
        }
        if let Some(link) = self.egress_link.take() {
            self.egress()?
                .detach(link)
                .context("detaching the TC egress program")?;
        }
        Ok(())
    }
}
