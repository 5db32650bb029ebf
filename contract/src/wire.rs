//! Enums that travel as strings (JSON, database columns, metric labels, CRD fields), declared
//! one way: [`wire_enum!`](crate::wire_enum) writes the enum, its serde names, `as_str`, `parse`,
//! `ALL` and `Display` from one list of `Variant = "wire"` pairs, so the name on the wire and the
//! name in a query or a label can never drift apart.

/// Declares a wire enum. Extra derives (`Default`, `JsonSchema`) and variant attributes
/// (`#[default]`) pass through; the calling crate must depend on `serde`.
///
/// ```
/// lumie_contract::wire_enum!(
///     /// A light.
///     #[derive(Default)]
///     pub enum Light {
///         /// Off.
///         #[default]
///         Off = "off",
///         /// On.
///         On = "on",
///     }
/// );
/// assert_eq!(Light::parse("on"), Some(Light::On));
/// assert_eq!(serde_json::to_string(&Light::Off).unwrap(), "\"off\"");
/// assert_eq!(Light::ALL, &[Light::Off, Light::On]);
/// ```
#[macro_export]
macro_rules! wire_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident {
        $($(#[$vm:meta])* $variant:ident = $wire:literal),+ $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        $vis enum $name {
            $($(#[$vm])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order, for metrics and tables.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire (and database, and label) name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// Parses a wire name (exactly; no case folding).
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
