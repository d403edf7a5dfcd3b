//! What EndpointSlice consumers (kube-proxy, cluster DNS, the Ingress controller) and
//! producers share: the label tying a slice to its Service.

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service (namespace, name) an IPv4 slice belongs to; `None` for slices of another
/// address type (ferrokube's Service network is IPv4) or without the label.
pub fn service_of(slice: &EndpointSlice) -> Option<(&str, &str)> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let ns = slice.metadata.namespace.as_deref()?;
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((ns, svc.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_labelled_ipv4_slices_belong_to_a_service() {
        let slice = |ty: &str, labelled: bool| {
            let mut s = EndpointSlice {
                address_type: ty.into(),
                ..Default::default()
            };
            s.metadata.namespace = Some("prod".into());
            if labelled {
                s.metadata.labels = Some([(SERVICE_NAME_LABEL.into(), "db".into())].into());
            }
            s
        };
        assert_eq!(service_of(&slice("IPv4", true)), Some(("prod", "db")));
        assert_eq!(service_of(&slice("IPv6", true)), None);
        assert_eq!(service_of(&slice("IPv4", false)), None);
    }
}
