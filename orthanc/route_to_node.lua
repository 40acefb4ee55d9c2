-- Forward each new, stable chest CR/DX/CT study to the AI node (dicom-node).
--
-- Only CR, DX and CT series whose Body Part Examined is chest (or empty: the node then
-- checks the descriptions) are forwarded.  The node's own results come back as SR, SC (OT)
-- and SEG series, sent with the node's AE title: they are never forwarded.  Each instance is
-- forwarded once and marked with the user metadata "ForwardedToAINode", so the study
-- becoming stable again when the results arrive does not send anything twice.
-- If the node is unreachable, nothing is marked and the script logs the error; re-send
-- with: curl -X POST http://localhost:8042/modalities/ainode/store -d '<study id>'

local NODE = 'ainode'  -- the node's key in "DicomModalities"
local MODALITIES = { CR = true, DX = true, CT = true }
local CHEST = {
  [''] = true, CHEST = true, THORAX = true, LUNG = true,
  CHESTABDOMEN = true, CHEST_ABDOMEN = true, CHESTABDPELVIS = true, TORSO = true,
}

local function nodeAet()
  local modality = ParseJson(RestApiGet('/modalities/' .. NODE .. '/configuration'))
  return modality['AET']
end

function OnStableStudy(studyId, tags, metadata)
  local skipAet = nodeAet()
  local study = ParseJson(RestApiGet('/studies/' .. studyId))
  local toSend = {}
  for _, seriesId in ipairs(study['Series']) do
    local series = ParseJson(RestApiGet('/series/' .. seriesId))
    local modality = series['MainDicomTags']['Modality'] or ''
    local bodyPart = string.upper(series['MainDicomTags']['BodyPartExamined'] or '')
    bodyPart = string.gsub(bodyPart, ' ', '')
    if MODALITIES[modality] and CHEST[bodyPart] then
      for _, instanceId in ipairs(series['Instances']) do
        local meta = ParseJson(RestApiGet('/instances/' .. instanceId .. '/metadata?expand'))
        if meta['RemoteAET'] ~= skipAet and meta['ForwardedToAINode'] == nil then
          table.insert(toSend, instanceId)
        end
      end
    end
  end
  if #toSend == 0 then
    return
  end
  local request = DumpJson({ Resources = toSend, Synchronous = true }, true)
  local ok, err = pcall(RestApiPost, '/modalities/' .. NODE .. '/store', request)
  if not ok then
    print('dicom-node routing: sending study ' .. studyId .. ' failed: ' .. tostring(err))
    return
  end
  for _, instanceId in ipairs(toSend) do
    RestApiPut('/instances/' .. instanceId .. '/metadata/ForwardedToAINode', 'yes')
  end
  print('dicom-node routing: sent ' .. #toSend .. ' instance(s) of study ' .. studyId)
end
