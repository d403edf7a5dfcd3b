//! Which Ingresses a controller serves, by upstream's IngressClass rules: an Ingress
//! naming a class (`spec.ingressClassName`) belongs to the controller that class names
//! in `spec.controller`; one carrying the deprecated `kubernetes.io/ingress.class`
//! annotation belongs to the controller whose class has that name; one naming no class
//! belongs to the controller of the default class
//! (`ingressclass.kubernetes.io/is-default-class: "true"`), if that is ours.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The `spec.controller` of ferrokube's IngressClasses.
pub const CONTROLLER: &str = "ferrokube.io/ingress-controller";
/// The deprecated class annotation on Ingresses.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation marking the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The classes a controller answers to.
#[derive(Debug, Clone, Default)]
pub struct Classes {
    ours: BTreeSet<String>,
    default_is_ours: bool,
}

impl Classes {
    /// The classes among `classes` whose `spec.controller` is `controller`.
    pub fn new<'a>(controller: &str, classes: impl IntoIterator<Item = &'a IngressClass>) -> Self {
        let mut out = Classes::default();
        for c in classes {
            let controller_of = c.spec.as_ref().and_then(|s| s.controller.as_deref());
            if controller_of != Some(controller) {
                continue;
            }
            let Some(name) = c.metadata.name.clone() else {
                continue;
            };
            let default = c
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
            out.default_is_ours |= default;
            out.ours.insert(name);
        }
        out
    }

    /// Whether `ing` is served by this controller.
    pub fn serves(&self, ing: &Ingress) -> bool {
        let named = ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
            .filter(|n| !n.is_empty());
        let annotated = ing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLASS_ANNOTATION));
        match named.or(annotated.map(String::as_str)) {
            Some(class) => self.ours.contains(class),
            None => self.default_is_ours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, controller: &str, default: bool) -> IngressClass {
        let ann = if default {
            format!("annotations: {{{DEFAULT_CLASS_ANNOTATION}: 'true'}}")
        } else {
            String::new()
        };
        serde_norway::from_str(&format!(
            "metadata: {{name: {name}, {ann}}}\nspec: {{controller: {controller}}}"
        ))
        .unwrap()
    }

    fn ingress(class: Option<&str>, annotation: Option<&str>) -> Ingress {
        let mut i = Ingress {
            spec: Some(Default::default()),
            ..Default::default()
        };
        if let Some(c) = class {
            i.spec.as_mut().unwrap().ingress_class_name = Some(c.into());
        }
        if let Some(a) = annotation {
            i.metadata.annotations = Some([(CLASS_ANNOTATION.into(), a.into())].into());
        }
        i
    }

    #[test]
    fn classes_decide_by_name_annotation_and_default() {
        let ours = class("ferrokube", CONTROLLER, false);
        let nginx = class("nginx", "k8s.io/ingress-nginx", true);
        let c = Classes::new(CONTROLLER, [&ours, &nginx]);
        assert!(c.serves(&ingress(Some("ferrokube"), None)));
        assert!(!c.serves(&ingress(Some("nginx"), None)));
        assert!(!c.serves(&ingress(Some("missing"), None)));
        assert!(c.serves(&ingress(None, Some("ferrokube"))));
        assert!(!c.serves(&ingress(None, Some("nginx"))));
        // The name wins over the annotation.
        assert!(!c.serves(&ingress(Some("nginx"), Some("ferrokube"))));
        // No class: the default's controller, here nginx.
        assert!(!c.serves(&ingress(None, None)));
        let default_ours = class("ferrokube", CONTROLLER, true);
        let c = Classes::new(CONTROLLER, [&default_ours]);
        assert!(c.serves(&ingress(None, None)));
        assert!(!Classes::new(CONTROLLER, []).serves(&ingress(None, None)));
    }
}
