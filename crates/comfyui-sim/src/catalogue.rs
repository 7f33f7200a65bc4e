//! The simulator's node table as a [`comfyui_graph::Catalogue`]: `POST /prompt` is
//! checked by the same code that checks a job's graph at submit.

use std::borrow::Cow;

use comfyui_graph::Catalogue;
use serde_json::{Map, Value};

use crate::nodes::{self, Env};

pub struct SimCatalogue<'a>(pub &'a Env);

impl Catalogue for SimCatalogue<'_> {
    fn output_node(&self, class: &str) -> Option<bool> {
        nodes::class_info(class).map(|c| c.output_node)
    }

    fn input_types(&self, class: &str) -> Option<Cow<'_, Value>> {
        nodes::class_info(class).map(|_| Cow::Owned(nodes::input_types(class, self.0)))
    }

    fn returns(&self, class: &str) -> Cow<'_, [Value]> {
        let r = nodes::class_info(class).map(|c| c.returns).unwrap_or(&[]);
        Cow::Owned(r.iter().map(|t| Value::String(t.to_string())).collect())
    }

    fn validate_inputs(&self, class: &str) -> Vec<String> {
        nodes::class_info(class)
            .map(|c| c.validate_inputs.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    }

    fn custom_validate(&self, class: &str, inputs: &Map<String, Value>) -> Vec<(String, String)> {
        nodes::custom_validate(class, inputs, self.0)
    }
}
