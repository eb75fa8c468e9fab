use eventbus::{event, CatalogEntry, Event, FieldInfo, Payload};

/// An approval was granted.
#[event(name = "approval.granted", version = 3, topic = "approvals", key = approval_id, crate = "::eventbus")]
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApprovalGranted {
    pub approval_id: u64,
    pub note: Option<String>,
}

#[event(name = "user-profile.updated_v2")]
#[derive(serde::Serialize, serde::Deserialize)]
struct Unit;

#[event(name = "tuple")]
#[derive(serde::Serialize, serde::Deserialize)]
struct Tuple(String, u32);

fn main() {
    assert_eq!(ApprovalGranted::NAME, "approval.granted");
    assert_eq!(ApprovalGranted::VERSION, 3);
    assert_eq!(ApprovalGranted::TOPIC, "approvals");
    assert_eq!(ApprovalGranted::KEY_FIELD, Some("approval_id"));
    assert_eq!(
        ApprovalGranted::FIELDS,
        [
            FieldInfo { name: "approval_id", ty: "u64" },
            FieldInfo { name: "note", ty: "Option < String >" },
        ]
    );
    assert_eq!(<ApprovalGranted as Payload>::TYPES, ["approval.granted"]);
    let event = ApprovalGranted { approval_id: 7, note: None };
    assert_eq!(event.partition_key().as_deref(), Some("7"));

    let data = serde_json::value::RawValue::from_string(r#"{"approval_id":7,"note":null}"#.into())
        .expect("valid json");
    assert_eq!(ApprovalGranted::decode("approval.granted", 3, &data).expect("decodes"), event);
    assert!(ApprovalGranted::decode("approval.rejected", 3, &data).is_err());

    assert_eq!(Unit::TOPIC, "user-profile.updated_v2");
    assert_eq!(Unit::VERSION, 1);
    assert_eq!(Unit::KEY_FIELD, None);
    assert_eq!(Unit.partition_key(), None);
    assert!(Unit::FIELDS.is_empty());
    assert_eq!(Tuple::FIELDS[1], FieldInfo { name: "1", ty: "u32" });

    const ENTRY: CatalogEntry = CatalogEntry::of::<ApprovalGranted>();
    assert_eq!(ENTRY.key, Some("approval_id"));
}
