//! The config file (TOML): every option of `ttp start` is a key, named like the option
//! (`trans-port` or `trans_port`), and the command line overrides it.
//!
//! ```toml
//! uplink = ["eth0"]
//! bypass-uid = [1000]
//! no-lan-bypass = true
//! bootstrap-timeout = 120
//! ```
//!
//! The file is turned into command-line arguments and parsed by the same clap definition
//! as the command line, so a key and its option can never drift apart, and a bad value
//! gets the same message either way.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/ttp/ttp.toml";

/// The config file to use: `--config FILE`, or the default one if present.
pub fn path(matches: &clap::ArgMatches) -> Option<PathBuf> {
    or_default(matches.try_get_one::<PathBuf>("config").ok().flatten().cloned())
}

/// `given`, else the default file if present.
pub fn or_default(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()))
}

/// Arguments for the options that `file` sets and the command line (`matches`) does not,
/// for the subcommand `cmd`. Put them before the command line's own arguments.
pub fn args_from_file(cmd: &clap::Command, matches: &clap::ArgMatches, file: &Path) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the config file {}", file.display()))?;
    args_from_text(cmd, matches, &text, file)
}

/// [`args_from_file`] for the file's text (`file` names it in errors).
pub fn args_from_text(
    cmd: &clap::Command,
    matches: &clap::ArgMatches,
    text: &str,
    file: &Path,
) -> Result<Vec<OsString>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        // One line: where, and what (toml's own rendering spans several).
        let at = e.span().map(|r| r.start).unwrap_or(0).min(text.len());
        let line = text[..at].matches('\n').count() + 1;
        let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        anyhow::anyhow!(
            "{} is not valid TOML: line {line}, column {col}: {} (fix it or pass another --config)",
            file.display(),
            e.message().split_whitespace().collect::<Vec<_>>().join(" ")
        )
    })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(long.as_str()) && long != "config") else {
            let known: Vec<&str> =
                cmd.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "config" && *l != "help").collect();
            bail!("{}: unknown key `{key}` (known keys: {})", file.display(), known.join(", "));
        };
        // The command line wins: a key it also sets is ignored, lists included.
        if matches.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let flag = format!("--{long}");
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in values {
            match (v, takes_value) {
                (toml::Value::Boolean(true), false) => out.push(flag.clone().into()),
                (toml::Value::Boolean(false), false) => {}
                (toml::Value::String(s), true) => out.push(format!("{flag}={s}").into()),
                (toml::Value::Integer(i), true) => out.push(format!("{flag}={i}").into()),
                (v, false) => bail!("{}: `{key}` is a switch: write `{key} = true` (not {v})", file.display()),
                (v, true) => bail!("{}: `{key}` takes a string or a number, not {v}", file.display()),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;
    use crate::options::StartOptions;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        o: StartOptions,
    }

    fn merged(file: &str, cli: &[&str]) -> Result<StartOptions> {
        let dir = std::env::temp_dir().join(format!("ttp-config-{}-{}", std::process::id(), file.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ttp.toml");
        std::fs::write(&p, file).unwrap();
        let cmd = T::command();
        let argv: Vec<OsString> = std::iter::once("t").chain(cli.iter().copied()).map(OsString::from).collect();
        let m = cmd.clone().try_get_matches_from(&argv)?;
        let extra = args_from_file(&cmd, &m, &p);
        std::fs::remove_dir_all(&dir).unwrap();
        let mut all = vec![argv[0].clone()];
        all.extend(extra?);
        all.extend(argv[1..].iter().cloned());
        Ok(T::from_arg_matches(&cmd.try_get_matches_from(all)?)?.o)
    }

    #[test]
    fn every_key_is_an_option_and_the_command_line_wins() {
        let o = merged(
            "uplink = [\"eth0\", \"wlan0\"]\nbypass_uid = [1000, \"root\"]\nno-lan-bypass = true\nbootstrap-timeout = 120\ntrans-port = 1\n",
            &["--trans-port", "9999", "--uplink", "veth1"],
        )
        .unwrap();
        assert_eq!(o.uplinks, ["veth1"]);
        assert_eq!(o.bypass_uids, [1000, 0]);
        assert!(o.no_lan_bypass);
        assert_eq!(o.bootstrap_timeout, 120);
        assert_eq!(o.trans_port, 9999);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = |f: &str| format!("{:#}", merged(f, &[]).unwrap_err());
        assert!(e("no-such-key = 1").contains("unknown key `no-such-key`"));
        assert!(e("trans-port = [").contains("not valid TOML"));
        assert!(e("no-ipv6 = 3").contains("is a switch"));
        assert!(e("trans-port = 70000").contains("70000"));
        assert!(e("uplink = { a = 1 }").contains("takes a string or a number"));
    }
}
