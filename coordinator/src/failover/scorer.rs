//! The pure scorer.

use serde::{Deserialize, Serialize};

/// Placeholder until the scorer lands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateTable {}
