//! The node table (architecture.md §1): every node a node knows of, as the
//! primary master announces them with `NotifyNodeInformation`.

use std::collections::BTreeMap;

use neo_proto::packets::NodeInfo;
use neo_proto::{Address, NodeId, NodeState, NodeType};

/// What is known of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Its id.
    pub nid: NodeId,
    /// Its kind.
    pub node_type: NodeType,
    /// Where it listens; `None` for clients.
    pub address: Option<Address>,
    /// Its state.
    pub state: NodeState,
    /// When the master accepted its identification (§1.5); `None` for the
    /// primary master itself.
    pub id_timestamp: Option<f64>,
}

impl Node {
    /// The wire form.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            node_type: self.node_type,
            address: self.address.clone(),
            nid: Some(self.nid),
            state: self.state,
            id_timestamp: self.id_timestamp,
        }
    }
}

/// Nodes by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeTable {
    nodes: BTreeMap<NodeId, Node>,
}

impl NodeTable {
    /// An empty table.
    pub fn new() -> NodeTable {
        NodeTable::default()
    }

    /// The node with this id.
    pub fn get(&self, nid: NodeId) -> Option<&Node> {
        self.nodes.get(&nid)
    }

    /// The node with this id, to change it.
    pub fn get_mut(&mut self, nid: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(&nid)
    }

    /// The node listening on this address.
    pub fn by_address(&self, address: &Address) -> Option<&Node> {
        self.nodes
            .values()
            .find(|node| node.address.as_ref() == Some(address))
    }

    /// Adds or replaces a node.
    pub fn insert(&mut self, node: Node) {
        self.nodes.insert(node.nid, node);
    }

    /// Forgets a node.
    pub fn remove(&mut self, nid: NodeId) -> Option<Node> {
        self.nodes.remove(&nid)
    }

    /// Every node, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Nodes of one type.
    pub fn of_type(&self, node_type: NodeType) -> impl Iterator<Item = &Node> {
        self.iter().filter(move |node| node.node_type == node_type)
    }

    /// Whether `nid` is known and RUNNING.
    pub fn is_running(&self, nid: NodeId) -> bool {
        self.get(nid)
            .is_some_and(|node| node.state == NodeState::Running)
    }

    /// Applies one entry of `NotifyNodeInformation`: `UNKNOWN` forgets the
    /// node. Entries without an id are ignored (they name nobody).
    pub fn apply(&mut self, info: &NodeInfo) {
        let Some(nid) = info.nid else {
            return;
        };
        if info.state == NodeState::Unknown {
            self.nodes.remove(&nid);
            return;
        }
        self.insert(Node {
            nid,
            node_type: info.node_type,
            address: info.address.clone(),
            state: info.state,
            id_timestamp: info.id_timestamp,
        });
    }

    /// Primary master: the id to give a node of `node_type` that proposes
    /// `proposed` and listens on `address` (architecture.md §1.2). The
    /// proposal is kept when free, held by a node at the same address, or
    /// held by a storage that is not running; otherwise the smallest free id
    /// of the type's namespace.
    /// `reserved` is never given (the master's own id).
    pub fn allocate_nid(
        &self,
        node_type: NodeType,
        proposed: Option<NodeId>,
        address: Option<&Address>,
        reserved: NodeId,
    ) -> Option<NodeId> {
        let free_for = |nid: NodeId| {
            nid != reserved
                && match self.get(nid) {
                    None => true,
                    Some(node) => address.is_some() && node.address.as_ref() == address,
                }
        };
        // A storage id belongs to its database: a storage that is not
        // running may claim it back from another address (ephemeral ports),
        // or from none (known only from a partition table).
        let returning_storage = |nid: NodeId| {
            node_type == NodeType::Storage
                && nid != reserved
                && self.get(nid).is_some_and(|node| {
                    node.node_type == NodeType::Storage && node.state != NodeState::Running
                })
        };
        if let Some(nid) = proposed.filter(|nid| free_for(*nid) || returning_storage(*nid)) {
            return Some(nid);
        }
        (1..=NodeId::NUMBER_MAX)
            .filter_map(|number| NodeId::new(node_type, number))
            .find(|nid| free_for(*nid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(nid: i32, port: u16) -> Node {
        Node {
            nid: NodeId(nid),
            node_type: NodeType::Storage,
            address: Some(Address::new("127.0.0.1", port)),
            state: NodeState::Running,
            id_timestamp: Some(1.5),
        }
    }

    #[test]
    fn ids_are_allocated_in_namespaces() {
        let mut table = NodeTable::new();
        let master = NodeId::new(NodeType::Master, 1).expect("id");
        assert_eq!(
            table.allocate_nid(NodeType::Master, None, None, NodeId(0)),
            Some(master)
        );
        table.insert(storage(1, 1000));
        let address = Address::new("127.0.0.1", 2000);
        // S1 is taken by another address: the smallest free one.
        assert_eq!(
            table.allocate_nid(NodeType::Storage, Some(NodeId(1)), Some(&address), master),
            Some(NodeId(2))
        );
        // A storage that is down comes back at another address: its id.
        table.get_mut(NodeId(1)).expect("S1").state = NodeState::Down;
        assert_eq!(
            table.allocate_nid(NodeType::Storage, Some(NodeId(1)), Some(&address), master),
            Some(NodeId(1))
        );
        // ...but a new storage never gets it.
        assert_eq!(
            table.allocate_nid(NodeType::Storage, None, Some(&address), master),
            Some(NodeId(2))
        );
        // Same address: the node keeps its id.
        let same = Address::new("127.0.0.1", 1000);
        assert_eq!(
            table.allocate_nid(NodeType::Storage, Some(NodeId(1)), Some(&same), master),
            Some(NodeId(1))
        );
        // Nobody gets the master's own id.
        assert_eq!(
            table.allocate_nid(NodeType::Client, Some(master), None, master),
            NodeId::new(NodeType::Client, 1)
        );
    }

    #[test]
    fn notifications_add_update_and_forget() {
        let mut table = NodeTable::new();
        let node = storage(3, 1000);
        table.apply(&node.info());
        assert!(table.is_running(NodeId(3)));
        let mut down = node.info();
        down.state = NodeState::Down;
        table.apply(&down);
        assert!(!table.is_running(NodeId(3)));
        assert_eq!(
            table
                .by_address(&Address::new("127.0.0.1", 1000))
                .map(|n| n.nid),
            Some(NodeId(3))
        );
        down.state = NodeState::Unknown;
        table.apply(&down);
        assert!(table.get(NodeId(3)).is_none());
    }
}
