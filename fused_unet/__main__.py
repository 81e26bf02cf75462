from fused_unet.cli import main

raise SystemExit(main())
