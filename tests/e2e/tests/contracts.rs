//! `docs/asyncapi.yaml` against the code: each channel is a topic of the
//! registry with its partitions, production replicas and retention; the
//! receiving group is the consumer's; the messages are exactly the event
//! types consumers accept, with their checked-in schemas. (The document's
//! own validity is checked by `scripts/validate.sh`.)

use std::collections::BTreeSet;
use std::path::Path;

use events::UserEvent;
use kafka_service::topics::{Topic, TopicRegistry};
use yaml_rust2::{Yaml, YamlLoader};

fn read_yaml(path: &str) -> Yaml {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("{path}: {error}"));
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

#[test]
fn asyncapi_channels_messages_and_group_match_the_code() {
    let document = read_yaml("docs/asyncapi.yaml");
    let registry = TopicRegistry::default();
    let production = read_yaml("services/consumer/configuration/production.yaml");
    let channels = document["channels"].as_hash().expect("channels");

    let mut addresses = BTreeSet::new();
    for (name, channel) in channels {
        let address = channel["address"].as_str().expect("address");
        addresses.insert(address.to_owned());
        let topic = registry
            .topic_named(address)
            .unwrap_or_else(|| panic!("channel {name:?}: {address} is not a topic of the registry"));
        let spec = registry.spec(topic);
        let binding = &channel["bindings"]["kafka"];
        assert_eq!(binding["topic"].as_str(), Some(address));
        assert_eq!(
            binding["partitions"].as_i64(),
            Some(i64::from(spec.partitions)),
            "{address}"
        );
        let key = match topic {
            Topic::NewUserCreated => "new_user_created",
            Topic::IssuedToken => "issued_token",
            Topic::Retry => "retry",
            Topic::DeadLetter => "dead_letter",
        };
        assert_eq!(
            binding["replicas"].as_i64(),
            production["kafka"]["topics"][key]["replication_factor"].as_i64(),
            "{address}: replicas"
        );
        assert_eq!(
            binding["topicConfiguration"]["retention.ms"].as_i64(),
            spec.retention_ms,
            "{address}: retention"
        );
    }
    let all: BTreeSet<String> = Topic::ALL.iter().map(|&t| registry.name(t).to_owned()).collect();
    assert_eq!(addresses, all, "one channel per topic");

    let group = read_yaml("services/consumer/configuration/base.yaml")["kafka"]["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (name, operation) in document["operations"].as_hash().unwrap() {
        if operation["action"].as_str() == Some("receive") {
            let groups = &operation["bindings"]["kafka"]["groupId"]["enum"];
            assert_eq!(groups[0].as_str(), Some(group.as_str()), "{name:?}");
        }
    }

    let messages = document["components"]["messages"].as_hash().unwrap();
    let mut event_types = BTreeSet::new();
    for (_, message) in messages {
        let name = message["name"].as_str().unwrap();
        if let Some(payload) = message["payload"]["$ref"].as_str() {
            assert_eq!(
                payload,
                format!("./events/{name}.json"),
                "{name}: its checked-in schema"
            );
            assert_eq!(message["headers"]["$ref"].as_str(), Some("./events/headers.json"));
            event_types.insert(name.to_owned());
        }
    }
    let accepted: BTreeSet<String> = UserEvent::ACCEPTED_TYPES.iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(event_types, accepted, "a message per accepted event type");
}
