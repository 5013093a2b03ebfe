//! The pure failure detector.

use serde::{Deserialize, Serialize};

/// Placeholder until the detector lands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {}
