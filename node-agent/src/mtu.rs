//! The MTU of the WireGuard device and of pods.
//!
//! A WireGuard packet adds an outer IP header (20 bytes IPv4, 40 IPv6), UDP
//! (8) and WireGuard's own header and tag (32): 60 bytes over an IPv4
//! underlay, 80 over IPv6. Pods get the same value, so their TCP MSS fits in
//! one underlay packet and nothing depends on ICMP "fragmentation needed"
//! making it back.

/// WireGuard overhead over an IPv4 underlay.
pub const OVERHEAD_V4: u32 = 60;
/// WireGuard overhead over an IPv6 underlay.
pub const OVERHEAD_V6: u32 = 80;
/// The smallest MTU IPv6 allows on a link; weft refuses to go below it.
pub const MIN_MTU: u32 = 1280;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtuError {
    #[error("MTU {mtu} is below {MIN_MTU} (IPv6's minimum) — underlay MTU {underlay} is too small for WireGuard")]
    TooSmall { mtu: u32, underlay: u32 },
    #[error("configured MTU {0} is outside {MIN_MTU}..=65535")]
    BadOverride(u32),
}

/// The overlay MTU for an underlay link of `underlay` bytes; `configured`
/// (from `--mtu`) wins when set.
pub fn overlay_mtu(underlay: u32, underlay_v6: bool, configured: Option<u32>) -> Result<u32, MtuError> {
    if let Some(m) = configured {
        return if (MIN_MTU..=65535).contains(&m) {
            Ok(m)
        } else {
            Err(MtuError::BadOverride(m))
        };
    }
    let overhead = if underlay_v6 { OVERHEAD_V6 } else { OVERHEAD_V4 };
    let mtu = underlay.saturating_sub(overhead);
    if mtu < MIN_MTU {
        return Err(MtuError::TooSmall { mtu, underlay });
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            (1500, false, None, Ok(1440)),
            (1500, true, None, Ok(1420)),
            (9001, false, None, Ok(8941)),
            (1450, false, None, Ok(1390)),
            (1500, false, Some(1400), Ok(1400)),
            (
                1300,
                false,
                None,
                Err(MtuError::TooSmall {
                    mtu: 1240,
                    underlay: 1300,
                }),
            ),
            (0, false, None, Err(MtuError::TooSmall { mtu: 0, underlay: 0 })),
            (1500, false, Some(500), Err(MtuError::BadOverride(500))),
            (1500, false, Some(70000), Err(MtuError::BadOverride(70000))),
        ];
        for (underlay, v6, conf, want) in cases {
            assert_eq!(overlay_mtu(underlay, v6, conf), want, "{underlay} v6={v6} {conf:?}");
        }
    }
}
