//! Turning ComfyUI's WebSocket events into v2's `Progress` snapshot.
//!
//! The snapshot is complete on its own (one snapshot re-syncs a client): overall value,
//! nodes done out of the workflow's total, the current node and its class, the sampler's
//! step out of steps, and a short message such as `KSampler 12/20`. Cached nodes count
//! as done.
//!
//! The overall `value` weighs nodes by their work: a sampler node (a class named
//! `…Sampler…` with a literal integer `steps` input) counts as `steps` units, every
//! other node as one. So a 7-node text-to-image graph with a 20-step KSampler reads
//! about 15% when sampling starts, not 70%, and the bar never moves backwards: the
//! weights are known from the workflow before anything runs. Writes are throttled by the job task (at most one per
//! `progress_interval`, 500 ms by default).

use std::collections::{HashMap, HashSet};

use comfyui::Event;
use jobs::model::Progress;
use serde_json::{Map, Value};

pub(crate) struct Tracker {
    prompt_id: String,
    classes: HashMap<String, String>,
    /// Units of work per node (see the module docs).
    weights: HashMap<String, f64>,
    total: u32,
    done: HashSet<String>,
    current: Option<String>,
    step: Option<u32>,
    steps: Option<u32>,
    finished: bool,
}

impl Tracker {
    pub fn new(prompt_id: &str, workflow: &Map<String, Value>) -> Self {
        let classes = workflow
            .iter()
            .map(|(id, _)| {
                let class = crate::stage::class_of(workflow, id)
                    .unwrap_or("?")
                    .to_string();
                (id.clone(), class)
            })
            .collect::<HashMap<_, _>>();
        let weights = workflow
            .iter()
            .map(|(id, node)| (id.clone(), node_weight(node)))
            .collect();
        Tracker {
            prompt_id: prompt_id.to_string(),
            total: classes.len() as u32,
            classes,
            weights,
            done: HashSet::new(),
            current: None,
            step: None,
            steps: None,
            finished: false,
        }
    }

    fn ours(&self, p: Option<&str>) -> bool {
        p == Some(self.prompt_id.as_str())
    }

    /// Applies an event; true when the snapshot changed.
    pub fn apply(&mut self, event: &Event) -> bool {
        match event {
            Event::ExecutionStart { prompt_id, .. } if self.ours(Some(prompt_id)) => true,
            Event::ExecutionCached {
                prompt_id, nodes, ..
            } if self.ours(Some(prompt_id)) => {
                self.done.extend(nodes.iter().cloned());
                true
            }
            Event::Executing {
                node, prompt_id, ..
            } if self.ours(prompt_id.as_deref()) => {
                if let Some(prev) = self.current.take() {
                    self.done.insert(prev);
                }
                match node {
                    Some(n) => self.current = Some(n.clone()),
                    None => self.finished = true,
                }
                self.step = None;
                self.steps = None;
                true
            }
            Event::Progress {
                prompt_id,
                node,
                value,
                max,
            } if self.ours(prompt_id.as_deref()) => {
                if node.is_some() {
                    self.current = node.clone();
                }
                self.step = Some(value.max(0.0) as u32);
                self.steps = Some(max.max(0.0) as u32);
                true
            }
            Event::ProgressState { prompt_id, nodes } if self.ours(Some(prompt_id)) => {
                for n in nodes {
                    match n.state.as_str() {
                        "finished" => {
                            self.done.insert(n.node_id.clone());
                        }
                        "running" => {
                            if self.current.as_deref() != Some(n.node_id.as_str()) {
                                self.current = Some(n.node_id.clone());
                            }
                            if n.max > 1.0 {
                                self.step = Some(n.value.max(0.0) as u32);
                                self.steps = Some(n.max as u32);
                            }
                        }
                        _ => {}
                    }
                }
                true
            }
            Event::Executed {
                node, prompt_id, ..
            } if self.ours(Some(prompt_id)) => self.done.insert(node.clone()),
            Event::ExecutionSuccess { prompt_id, .. } if self.ours(Some(prompt_id)) => {
                self.finished = true;
                true
            }
            _ => false,
        }
    }

    pub fn snapshot(&self) -> Progress {
        let done = if self.finished {
            self.total
        } else {
            (self.done.len() as u32).min(self.total)
        };
        let frac = match (self.step, self.steps) {
            (Some(s), Some(n)) if n > 0 && !self.finished => f64::from(s.min(n)) / f64::from(n),
            _ => 0.0,
        };
        let weight = |id: &str| self.weights.get(id).copied().unwrap_or(1.0);
        let total_weight: f64 = self.weights.values().sum();
        let value = if self.finished {
            1.0
        } else if total_weight <= 0.0 {
            0.0
        } else {
            let done_weight: f64 = self.done.iter().map(|id| weight(id)).sum();
            let current_weight = self
                .current
                .as_deref()
                .filter(|id| !self.done.contains(*id))
                .map_or(0.0, weight);
            ((done_weight + current_weight * frac) / total_weight).min(1.0)
        };
        let current_class = self
            .current
            .as_ref()
            .and_then(|c| self.classes.get(c))
            .cloned();
        let message = match (&current_class, self.step, self.steps) {
            _ if self.finished => Some("finishing".to_string()),
            (Some(class), Some(s), Some(n)) if n > 0 => Some(format!("{class} {s}/{n}")),
            (Some(class), _, _) => Some(class.clone()),
            _ => None,
        };
        Progress {
            value,
            nodes_done: done,
            nodes_total: self.total,
            current_node: if self.finished {
                None
            } else {
                self.current.clone()
            },
            current_node_class: if self.finished { None } else { current_class },
            step: self.step,
            steps: self.steps,
            message,
        }
    }
}

/// Units of work a node stands for: its `steps` for a sampler, else one.
fn node_weight(node: &Value) -> f64 {
    let is_sampler = node
        .get("class_type")
        .and_then(Value::as_str)
        .is_some_and(|class| class.contains("Sampler"));
    let steps = node
        .pointer("/inputs/steps")
        .and_then(Value::as_u64)
        .filter(|s| *s >= 1);
    match (is_sampler, steps) {
        (true, Some(steps)) => steps as f64,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn follows_a_sampler() {
        let wf = json!({
            "3": {"class_type": "KSampler", "inputs": {}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
            "9": {"class_type": "SaveImage", "inputs": {}}
        });
        let mut t = Tracker::new("p", wf.as_object().unwrap());
        t.apply(&Event::ExecutionCached {
            prompt_id: "p".into(),
            nodes: vec!["4".into()],
            timestamp: None,
        });
        t.apply(&Event::Executing {
            node: Some("3".into()),
            display_node: None,
            prompt_id: Some("p".into()),
        });
        t.apply(&Event::Progress {
            prompt_id: Some("p".into()),
            node: Some("3".into()),
            value: 12.0,
            max: 20.0,
        });
        let p = t.snapshot();
        assert_eq!(p.message.as_deref(), Some("KSampler 12/20"));
        assert_eq!((p.nodes_done, p.nodes_total), (1, 3));
        assert_eq!(p.current_node_class.as_deref(), Some("KSampler"));
        assert!((p.value - (1.0 + 0.6) / 3.0).abs() < 1e-9);
        // Someone else's events change nothing.
        assert!(!t.apply(&Event::Executing {
            node: Some("9".into()),
            display_node: None,
            prompt_id: Some("other".into()),
        }));
        t.apply(&Event::Executing {
            node: None,
            display_node: None,
            prompt_id: Some("p".into()),
        });
        assert_eq!(t.snapshot().value, 1.0);
    }

    #[test]
    fn a_sampler_weighs_its_steps_and_the_bar_never_goes_back() {
        let wf = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {}},
            "3": {"class_type": "KSampler", "inputs": {"steps": 20}},
            "8": {"class_type": "VAEDecode", "inputs": {}},
            "9": {"class_type": "SaveImage", "inputs": {}}
        });
        let mut t = Tracker::new("p", wf.as_object().unwrap());
        let mut last = 0.0;
        let mut check = |t: &Tracker| {
            let value = t.snapshot().value;
            assert!(value >= last, "the value went back from {last} to {value}");
            last = value;
            value
        };
        for node in ["4", "5", "6", "7", "3"] {
            t.apply(&Event::Executing {
                node: Some(node.into()),
                display_node: None,
                prompt_id: Some("p".into()),
            });
            check(&t);
        }
        // Four cheap nodes done, the sampler about to step: 4 of 26 units.
        assert!((t.snapshot().value - 4.0 / 26.0).abs() < 1e-9);
        for step in 1..=20 {
            t.apply(&Event::Progress {
                prompt_id: Some("p".into()),
                node: Some("3".into()),
                value: f64::from(step),
                max: 20.0,
            });
            check(&t);
        }
        assert!((t.snapshot().value - 24.0 / 26.0).abs() < 1e-9);
        assert_eq!(t.snapshot().message.as_deref(), Some("KSampler 20/20"));
        t.apply(&Event::Executing {
            node: None,
            display_node: None,
            prompt_id: Some("p".into()),
        });
        assert_eq!(check(&t), 1.0);
    }
}
