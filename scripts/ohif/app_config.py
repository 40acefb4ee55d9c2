"""Print OHIF's app-config.js with its data source pointed at the local DICOMweb proxy."""

import sys
from pathlib import Path

LOCAL_SOURCE = """  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'ohif',
      configuration: {
        friendlyName: 'Orthanc (dicom-node)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
"""

text = Path(sys.argv[1]).read_text()
start, end = text.index("  dataSources: ["), text.index("  httpErrorHandler")
print(text[:start] + LOCAL_SOURCE + text[end:])
