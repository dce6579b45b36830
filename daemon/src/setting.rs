//! How one setting is declared, read from the config file and shown by `config/get`. A section
//! of settings (`[daemon]`, `[agent]`) is one [`settings!`] table: each row gives the key, the
//! type, the default, the name `config/get` shows and the doc. The effective struct, its
//! defaults, the file's all-optional mirror, the overlay and the redacted view are generated
//! from that row, so a setting cannot be added to one of them and forgotten in another.
//!
//! A leaf module: `config` and `model` both use it, and it uses neither.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// A type a setting can have: how the file writes it and how `config/get` shows it.
pub trait Setting: Sized {
    /// The value as the file writes it; its `Deserialize` error is the message a bad key gets.
    type File: for<'de> Deserialize<'de> + Clone;
    fn from_file(file: Self::File) -> Self;
    /// The value in `config/get` (durations in milliseconds, paths as text).
    fn to_json(&self) -> Value;
    /// The value as TOML text, and one different from it: the round-trip test writes every
    /// setting into a file with these.
    #[cfg(test)]
    fn to_toml(&self) -> String;
    #[cfg(test)]
    fn changed(&self) -> Self;
}

macro_rules! plain_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            type File = $t;
            fn from_file(file: $t) -> Self {
                file
            }
            fn to_json(&self) -> Value {
                Value::from(*self)
            }
            #[cfg(test)]
            fn to_toml(&self) -> String {
                self.to_string()
            }
            #[cfg(test)]
            fn changed(&self) -> Self {
                self + 1
            }
        }
    )*};
}
plain_setting!(u32, usize);

impl Setting for Duration {
    type File = HumanDuration;
    fn from_file(file: HumanDuration) -> Self {
        file.0
    }
    fn to_json(&self) -> Value {
        Value::from(self.as_millis() as u64)
    }
    #[cfg(test)]
    fn to_toml(&self) -> String {
        format!("\"{}ms\"", self.as_millis())
    }
    #[cfg(test)]
    fn changed(&self) -> Self {
        *self + Duration::from_millis(7)
    }
}

/// `idle_timeout`: `None` is never.
impl Setting for Option<Duration> {
    type File = IdleTimeout;
    fn from_file(file: IdleTimeout) -> Self {
        file.0
    }
    fn to_json(&self) -> Value {
        self.map_or(Value::Null, |d| d.to_json())
    }
    #[cfg(test)]
    fn to_toml(&self) -> String {
        self.map_or("0".to_owned(), |d| d.to_toml())
    }
    #[cfg(test)]
    fn changed(&self) -> Self {
        Some(self.unwrap_or_default().changed())
    }
}

impl Setting for PathBuf {
    type File = PathBuf;
    fn from_file(file: PathBuf) -> Self {
        file
    }
    fn to_json(&self) -> Value {
        Value::from(self.display().to_string())
    }
    #[cfg(test)]
    fn to_toml(&self) -> String {
        format!("{:?}", self.display().to_string())
    }
    #[cfg(test)]
    fn changed(&self) -> Self {
        self.join("changed")
    }
}

impl Setting for bool {
    type File = bool;
    fn from_file(file: bool) -> Self {
        file
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    #[cfg(test)]
    fn to_toml(&self) -> String {
        self.to_string()
    }
    #[cfg(test)]
    fn changed(&self) -> Self {
        !self
    }
}

/// A list of paths (`["/a", "/b"]`).
impl Setting for Vec<PathBuf> {
    type File = Vec<PathBuf>;
    fn from_file(file: Vec<PathBuf>) -> Self {
        file
    }
    fn to_json(&self) -> Value {
        Value::from(
            self.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        )
    }
    #[cfg(test)]
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|p| p.to_toml()).collect();
        format!("[{}]", items.join(", "))
    }
    #[cfg(test)]
    fn changed(&self) -> Self {
        let mut v = self.clone();
        v.push(PathBuf::from("/changed"));
        v
    }
}

/// A sandbox mode, by its wire name (`"workspace-write"`, `"read-only"`, `"off"`).
impl Setting for crush_protocol::SandboxMode {
    type File = crush_protocol::SandboxMode;
    fn from_file(file: Self) -> Self {
        file
    }
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
    #[cfg(test)]
    fn to_toml(&self) -> String {
        format!("{:?}", self.as_str())
    }
    #[cfg(test)]
    fn changed(&self) -> Self {
        match self {
            Self::WorkspaceWrite => Self::ReadOnly,
            Self::ReadOnly | Self::Off => Self::WorkspaceWrite,
        }
    }
}

/// A model name (`<provider>/<model>`); `None` when unset (the file has no empty value for it).
impl Setting for Option<String> {
    type File = String;
    fn from_file(file: String) -> Self {
        Some(file.trim().to_owned()).filter(|n| !n.is_empty())
    }
    fn to_json(&self) -> Value {
        self.clone().map_or(Value::Null, Value::from)
    }
    #[cfg(test)]
    fn to_toml(&self) -> String {
        format!("{:?}", self.clone().unwrap_or_default())
    }
    #[cfg(test)]
    fn changed(&self) -> Self {
        Some(format!("{}changed/model", self.clone().unwrap_or_default()))
    }
}

/// Declares one section of settings. Each row is
/// `/// doc` `key: Type = default, "configGetName";` and generates:
/// - `$Settings`: the effective values (`Default` from the rows' defaults);
/// - `$File`: the section as the file writes it, every key optional, unknown keys refused;
/// - `$Settings::apply`: overlays what a `$File` sets (the file, and the flags through the same
///   type);
/// - `$Settings::to_json`: the section in `config/get`;
/// - `$Settings::KEYS`: every `(key, configGetName)`, for the tests that keep docs and views
///   complete;
/// - `$Settings::DOCS` and `$Settings::doc`: each row's doc, the help of the flag that sets it.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $Settings:ident, file $File:ident {
            $(
                $(#[doc = $doc:literal])*
                $key:ident: $ty:ty = $default:expr, $json:literal;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $Settings {
            $( $(#[doc = $doc])* pub $key: $ty, )*
        }

        impl Default for $Settings {
            fn default() -> Self {
                Self { $( $key: $default, )* }
            }
        }

        #[doc = concat!("[`", stringify!($Settings), "`] as the file writes it: every key optional.")]
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $File {
            $( $(#[doc = $doc])* pub $key: Option<<$ty as $crate::setting::Setting>::File>, )*
        }

        impl $Settings {
            /// Every `(TOML key, config/get name)`, in declaration order.
            pub const KEYS: &'static [(&'static str, &'static str)] =
                &[ $( (stringify!($key), $json), )* ];

            /// Every `(TOML key, doc)`: a flag that sets a key shows its row's doc as its help.
            pub const DOCS: &'static [(&'static str, &'static str)] =
                &[ $( (stringify!($key), concat!($($doc),*)), )* ];

            /// The doc of `key` as `--help` shows a doc comment: one line, no final period
            /// (empty for an unknown key).
            pub fn doc(key: &str) -> String {
                Self::DOCS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, d)| d.split_whitespace().collect::<Vec<_>>().join(" "))
                    .map(|d| d.strip_suffix('.').map(str::to_owned).unwrap_or(d))
                    .unwrap_or_default()
            }

            /// Overlays the keys `file` sets.
            pub fn apply(&mut self, file: &$File) {
                $(
                    if let Some(v) = &file.$key {
                        self.$key = $crate::setting::Setting::from_file(v.clone());
                    }
                )*
            }

            /// The section in `config/get`.
            pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut out = serde_json::Map::new();
                $( out.insert($json.to_owned(), $crate::setting::Setting::to_json(&self.$key)); )*
                out
            }

            /// The section as TOML lines, every value changed from `self`'s.
            #[cfg(test)]
            pub fn changed_toml(&self) -> (Self, String) {
                let changed = Self { $( $key: $crate::setting::Setting::changed(&self.$key), )* };
                let mut text = String::new();
                $(
                    text.push_str(&format!(
                        "{} = {}\n",
                        stringify!($key),
                        $crate::setting::Setting::to_toml(&changed.$key)
                    ));
                )*
                (changed, text)
            }
        }
    };
}
pub(crate) use settings;

/// A duration written like `"100ms"` or `"2s"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a duration like \"100ms\" or \"2s\" ({e})"
                ))
            })
    }
}

/// An idle timeout written as a human duration; zero means never.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleTimeout(pub Option<Duration>);

impl std::str::FromStr for IdleTimeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" || s == "never" {
            return Ok(Self(None));
        }
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like \"10m\" or \"30s\" ({e})"))?;
        Ok(Self(if d.is_zero() { None } else { Some(d) }))
    }
}

impl<'de> Deserialize<'de> for IdleTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(0) => Ok(Self(None)),
            Raw::Secs(n) => Ok(Self(Some(Duration::from_secs(n)))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}
