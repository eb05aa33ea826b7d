-- `versions.data` holds what the older service wrote there, and its readers
-- unmarshal into Version.Data: `json.Marshal(componentVersion.Version.Data)`,
-- the release's `data` object, or JSON null when absent. Earlier versions of this
-- worker stored the whole event ({"component": …, "version": …}) instead. This
-- repairs exactly those rows: a document whose `component.name`, `version.train`
-- and `version.version` are the row's own. Rows the older service wrote (its
-- Data has no such members) are left as they are. The sub-document is kept
-- verbatim (`->` on json returns its text unchanged).
UPDATE versions
   SET data = COALESCE(data -> 'version' -> 'data', 'null'::json)
 WHERE json_typeof(data) = 'object'
   AND json_typeof(data -> 'component') = 'object'
   AND json_typeof(data -> 'version') = 'object'
   AND data -> 'component' ->> 'name' = component_name
   AND data -> 'version' ->> 'train' = train
   AND data -> 'version' ->> 'version' = version;
