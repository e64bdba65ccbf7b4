//! Interface names as the user gives them: what a valid one is, a prefix and `*` for a
//! family of them (Docker's `br-<id>` bridges), and which exist now.
//!
//! A leaf: the daemon checks `--gateway` values with it, the datapath, the gateway's
//! routing and the uplink follower match names with it, and `ttp status` shows them.

/// A `--gateway` value: an interface's name, or a prefix of one and `*` (not `*` alone,
/// which would take every interface, the uplinks' and loopback among them).
pub fn valid_gateway_spec(spec: &str) -> bool {
    match spec.strip_suffix('*') {
        Some(prefix) => !prefix.contains('*') && valid_interface_name(prefix),
        None => !spec.contains('*') && valid_interface_name(spec),
    }
}

/// Could `name` be a network interface's name? The kernel's rule (`dev_valid_name`), so
/// that a gateway interface that does not exist yet is at least one that could.
pub fn valid_interface_name(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Does the `--gateway` value `spec` (a name, or a prefix and `*`) name interface `name`?
pub fn matches(spec: &str, name: &str) -> bool {
    match spec.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => spec == name,
    }
}

/// Is there an interface with this index now?
pub fn index_exists(index: u32) -> bool {
    nix::net::if_::if_indextoname(index).is_ok()
}

/// The interfaces there now that one of `specs` names, sorted.
pub fn present(specs: &[String]) -> Vec<String> {
    let mut names: Vec<String> = nix::net::if_::if_nameindex()
        .map(|list| list.iter().map(|i| i.name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| specs.iter().any(|s| matches(s, n)));
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn interface_names_follow_the_kernels_rule() {
        for ok in ["docker0", "podman0", "cni-podman0", "eth0.5", "br-0123456789ab", "a"] {
            assert!(super::valid_interface_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "eth0:1", "with space", "sixteen_bytes_ab", "tab\t"] {
            assert!(!super::valid_interface_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_gateway_is_a_name_or_a_prefix_and_a_star() {
        for ok in ["docker0", "br-*", "podman*", "veth1234"] {
            assert!(super::valid_gateway_spec(ok), "{ok}");
        }
        for bad in ["*", "**", "br*-x", "b*r*", "a/b*", ""] {
            assert!(!super::valid_gateway_spec(bad), "{bad:?}");
        }
        use super::matches;
        assert!(matches("br-*", "br-0123456789ab") && matches("docker0", "docker0"));
        assert!(!matches("br-*", "br0") && !matches("docker0", "docker01") && !matches("docker0", "docker"));
    }
}
