//! Shapes shared by several operations: enums, unions, configuration blocks
//! and the timestamp encoding.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_with::skip_serializing_none;

/// `Tags`: tag key → value.
pub type Tags = BTreeMap<String, String>;
/// `EnvironmentVariableMap`: name → value.
pub type EnvironmentVariables = BTreeMap<String, String>;

/// A model `Timestamp`: on the wire, epoch seconds as a JSON number (the
/// rest-json default botocore parses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }

    /// Seconds since the epoch, negative before it.
    pub fn as_unix_seconds(self) -> f64 {
        match self.0.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_secs_f64(),
            Err(before) => -before.duration().as_secs_f64(),
        }
    }

    /// `None` for NaN, infinities and values outside `SystemTime`'s range.
    pub fn from_unix_seconds(seconds: f64) -> Option<Self> {
        let magnitude = Duration::try_from_secs_f64(seconds.abs()).ok()?;
        let time = if seconds >= 0.0 {
            UNIX_EPOCH.checked_add(magnitude)?
        } else {
            UNIX_EPOCH.checked_sub(magnitude)?
        };
        Some(Timestamp(time))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Millisecond precision: what AWS sends, and free of float noise.
        let millis = (self.as_unix_seconds() * 1000.0).round() / 1000.0;
        serializer.serialize_f64(millis)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        Timestamp::from_unix_seconds(seconds)
            .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
    }
}

/// Declares a string enum with the model's exact wire values.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $wire)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("{s:?} is not a {}", stringify!($name)))
            }
        }
    };
}

wire_enum!(Architecture { Arm64 = "ARM_64", X86_64 = "X86_64" });
wire_enum!(Chipset { Graviton = "GRAVITON", Intel = "INTEL" });
wire_enum!(Capability { All = "ALL" });
wire_enum!(HookState { Disabled = "DISABLED", Enabled = "ENABLED" });
wire_enum!(BuildState {
    Pending = "PENDING",
    InProgress = "IN_PROGRESS",
    Successful = "SUCCESSFUL",
    Failed = "FAILED",
});
wire_enum!(MicrovmImageState {
    Creating = "CREATING",
    Created = "CREATED",
    CreateFailed = "CREATE_FAILED",
    Updating = "UPDATING",
    Updated = "UPDATED",
    UpdateFailed = "UPDATE_FAILED",
    Deleting = "DELETING",
    DeleteFailed = "DELETE_FAILED",
    Deleted = "DELETED",
});
wire_enum!(MicrovmImageVersionState {
    Pending = "PENDING",
    InProgress = "IN_PROGRESS",
    Successful = "SUCCESSFUL",
    Failed = "FAILED",
    Deleting = "DELETING",
    Deleted = "DELETED",
    DeleteFailed = "DELETE_FAILED",
});
wire_enum!(MicrovmImageVersionStatus { Active = "ACTIVE", Inactive = "INACTIVE" });
wire_enum!(ManagedMicrovmImageVersionStatus {
    Available = "AVAILABLE",
    Deprecated = "DEPRECATED",
    Recalled = "RECALLED",
});
wire_enum!(MicrovmState {
    Pending = "PENDING",
    Running = "RUNNING",
    Suspending = "SUSPENDING",
    Suspended = "SUSPENDED",
    Terminating = "TERMINATING",
    Terminated = "TERMINATED",
});

/// The model's empty structure (`Unit`, `LoggingDisabled`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Union `CodeArtifact`: where the build fetches the code from.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeArtifact {
    pub uri: Option<String>,
}

/// Union `Logging`: exactly one of the members is set.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    pub disabled: Option<Empty>,
    pub cloud_watch: Option<CloudWatchLogging>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudWatchLogging {
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuConfiguration {
    pub architecture: Architecture,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(rename = "minimumMemoryInMiB")]
    pub minimum_memory_in_mib: i32,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    pub port: Option<i32>,
    pub microvm_hooks: Option<MicrovmHooks>,
    pub microvm_image_hooks: Option<MicrovmImageHooks>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmHooks {
    pub run: Option<HookState>,
    pub run_timeout_in_seconds: Option<i32>,
    pub resume: Option<HookState>,
    pub resume_timeout_in_seconds: Option<i32>,
    pub suspend: Option<HookState>,
    pub suspend_timeout_in_seconds: Option<i32>,
    pub terminate: Option<HookState>,
    pub terminate_timeout_in_seconds: Option<i32>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageHooks {
    pub ready: Option<HookState>,
    pub ready_timeout_in_seconds: Option<i32>,
    pub validate: Option<HookState>,
    pub validate_timeout_in_seconds: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdlePolicy {
    pub max_idle_duration_seconds: i32,
    pub suspended_duration_seconds: i32,
    pub auto_resume_enabled: bool,
}

/// Union `PortSpecification`: one port, a range, or every port.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpecification {
    pub port: Option<i32>,
    pub range: Option<PortRange>,
    pub all_ports: Option<Empty>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    pub start_port: i32,
    pub end_port: i32,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotBuild {
    pub memory_snapshot_size_in_bytes: Option<i64>,
    pub code_install_size_in_bytes: Option<i64>,
    pub disk_snapshot_size_in_bytes: Option<i64>,
}
